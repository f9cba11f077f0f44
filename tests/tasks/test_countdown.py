"""Countdown: the safe parser and exact evaluator, the verifier's rewards on hand-made answers, the
generator's seeded disjoint splits and solvability (by exhaustive search), and the task's tensors.

With ``given`` / ``used`` the multisets of numbers and ``match = |used ∩ given| / max(|used|, |given|)``:
partial = 1 if correct, 0 if it does not parse, else 0.1 + 0.2 match + 0.2 closeness (right numbers only).
"""

import random
from fractions import Fraction

import pytest
import torch

from dflow.tasks import CountdownTask
from dflow.tasks.base import SPLITS, Prompt
from dflow.tasks.countdown import CountdownProblem, check_answer, parse_expression, solve, to_text
from dflow.tasks.countdown import rewards as countdown_rewards
from dflow.tasks.countdown.expression import MAX_CHARS, MAX_DEPTH, BinOp, Num, evaluate
from dflow.tasks.countdown.task import ALPHABET

P = CountdownProblem((3, 7, 25), 46, "25+3*7")


@pytest.mark.parametrize(
    "text, value, numbers",
    [
        ("25+3*7", 46, (25, 3, 7)),
        ("(25+3)*7", 196, (25, 3, 7)),
        (" 25 +\t3 * 7\n", 46, (25, 3, 7)),  # ASCII whitespace between tokens is skipped
        ("((7))", 7, (7,)),
        ("4/6*3", 2, (4, 6, 3)),  # exact: 2/3 * 3 == 2
        ("7-25", -18, (7, 25)),  # a negative value is a value (it is just not the target)
        ("100-99/33", 97, (100, 99, 33)),
        ("1/3+1/6", Fraction(1, 2), (1, 3, 1, 6)),
        ("0", 0, (0,)),
    ],
)
def test_parser_evaluates_exactly(text, value, numbers):
    parsed = parse_expression(text)
    assert parsed.expr is not None, parsed.error
    assert evaluate(parsed.expr) == value and parsed.expr.numbers() == numbers


@pytest.mark.parametrize(
    "text, reason",
    [
        ("", "empty"),
        ("   ", "empty"),
        ("3+", "ends too early"),
        ("+3", "expected a number"),
        ("-3+5", "expected a number"),  # no unary minus
        ("3**2", "expected a number"),
        ("3 7", "unexpected '7'"),
        ("(3+4", "ends too early"),
        ("3+4)", "unexpected ')'"),
        ("()", "expected a number"),
        ("3=3", "'='"),
        ("07+1", "leading zero"),
        ("3.5", "'.'"),
        ("x", "'x'"),
        ("2^3", "'^'"),
        ("\uff13+4", "'３'"),  # full-width 3: str.isdigit() is True, but it is not an ASCII digit
        ("\u0663+4", "'٣'"),  # Arabic-Indic 3
        ("3\u00b2", "'²'"),
        ("3\u200b+4", "'\\u200b'"),  # zero-width space
        ("3+4\U0001f600", "'😀'"),
        ("__import__('os')", "'_'"),
        ("1" * (MAX_CHARS + 1), "longer than"),
        ("(" * (MAX_DEPTH + 1) + "1" + ")" * (MAX_DEPTH + 1), "nested"),
    ],
)
def test_parser_refuses_malformed_text_with_a_reason_and_never_raises(text, reason):
    parsed = parse_expression(text)
    assert parsed.expr is None and reason in parsed.error


def test_division_by_zero_parses_but_has_no_value():
    parsed = parse_expression("3/(7-7)")
    assert parsed.expr is not None and evaluate(parsed.expr) is None


def test_to_text_uses_the_fewest_parentheses_and_reparses_to_the_same_value():
    a, b, c = Num(8), Num(4), Num(2)
    assert to_text(BinOp("-", a, BinOp("-", b, c))) == "8-(4-2)"
    assert to_text(BinOp("-", BinOp("-", a, b), c)) == "8-4-2"
    assert to_text(BinOp("/", a, BinOp("*", b, c))) == "8/(4*2)"
    assert to_text(BinOp("*", BinOp("+", a, b), c)) == "(8+4)*2"
    assert to_text(BinOp("+", a, BinOp("-", b, c))) == "8+4-2"  # same value, fewer parentheses
    rng = random.Random(0)
    for _ in range(300):
        items = [Num(rng.randint(1, 100)) for _ in range(rng.randint(1, 4))]
        while len(items) > 1:
            i, j = rng.sample(range(len(items)), 2)
            node = BinOp(rng.choice("+-*/"), items[i], items[j])
            items = [e for k, e in enumerate(items) if k not in (i, j)] + [node]
        back = parse_expression(to_text(items[0])).expr
        assert back is not None and evaluate(back) == evaluate(items[0])
        assert sorted(back.numbers()) == sorted(items[0].numbers())


@pytest.mark.parametrize(
    "answer, correct, fmt, d1, partial",
    [
        ("25+3*7", True, 1, 1.0, 1.0),
        ("3*7+25", True, 1, 1.0, 1.0),
        ("(7*3)+25", True, 1, 1.0, 1.0),  # redundant parentheses are fine
        ("25+3+7", False, 1, 0.1, 0.1 + 0.2 + 0.2 * (1 - 11 / 46)),  # = 35: closeness 35/46
        ("25-3-7", False, 1, 0.1, 0.1 + 0.2 + 0.2 * (1 - 31 / 46)),  # = 15
        ("25*7*3", False, 1, 0.1, 0.1 + 0.2),  # = 525: more than 2x off, closeness 0
        ("25+3", False, 0, 0.1, 0.1 + 0.2 * 2 / 3),  # misses 7: match 2/3
        ("25+21", False, 0, 0.1, 0.1 + 0.2 * 1 / 3),  # 21 is not given, 3 and 7 missing: match 1/3
        ("25+3*7+7-7", False, 0, 0.1, 0.1 + 0.2 * 3 / 5),  # uses 7 three times: value 46 but not correct
        ("25+25-4", False, 0, 0.1, 0.1 + 0.2 * 1 / 3),
        ("46", False, 0, 0.1, 0.1),  # the target itself: closeness only counts with the right numbers
        ("3/(7-7)+25", False, 0, 0.1, 0.1 + 0.2 * 3 / 4),  # division by zero, and 7 twice
        ("99999999999999999999*99999999999999999999*99999999999999999999", False, 0, 0.1, 0.1),  # huge: no overflow
        ("25+3*7=46", False, 0, 0.0, 0.0),  # '=' is not allowed
        ("", False, 0, 0.0, 0.0),
        ("25 + 3 × 7", False, 0, 0.0, 0.0),
    ],
)
def test_rewards_on_hand_made_answers(answer, correct, fmt, d1, partial):
    check = check_answer(answer, P)
    assert check.correct is correct
    assert check.format_reward == fmt and check.d1_reward == pytest.approx(d1)
    assert check.partial_reward(P.target) == pytest.approx(partial)


def test_division_by_zero_with_the_right_numbers_scores_format_only():
    check = check_answer("3/(5-5)", CountdownProblem((3, 5, 5), 1, ""))
    assert (check.parses, check.numbers_ok, check.value, check.correct) == (True, True, None, False)
    assert check.format_reward == 1 and check.partial_reward(1) == pytest.approx(0.1 + 0.2)
    assert check.detail == "division by zero"


def test_details_name_what_is_wrong():
    assert check_answer("25+3*7", P).detail == "= 46, the target"
    assert check_answer("25+3+7", P).detail == "= 35, not 46"
    assert "uses 7 3 times (given 1)" in check_answer("25+3*7+7-7", P).detail
    assert "misses 7" in check_answer("25+3", P).detail and "21 is not given" in check_answer("25+21", P).detail
    assert check_answer("3/(7-7)+25", P).detail.startswith("division by zero")
    assert "(not an integer)" in check_answer("25/3*7", P).detail
    assert check_answer("x", P).detail.startswith("does not parse")


def test_exact_arithmetic_where_floats_would_accept_a_near_miss():
    # 1000000/999999*1 is 1.000001: within d1's 1e-5 float tolerance of 1, but not 1
    near = CountdownProblem((1000000, 999999, 1), 1, "")
    assert not check_answer("1000000/999999*1", near).correct
    # and a value that floats get wrong (7/3*3 rounds) is exactly right
    assert check_answer("7/3*3", CountdownProblem((7, 3, 3), 7, "")).correct


def test_fuzzed_text_never_raises_and_scores_in_range():
    rng = random.Random(0)
    pool = "0123456789+-*/()  =.x\n\u00d7\uff13\u0663\U0001f600"
    for _ in range(3000):
        text = "".join(rng.choice(pool) for _ in range(rng.randint(0, 24)))
        check = check_answer(text, P)
        r = check.partial_reward(P.target)
        assert 0.0 <= r <= 1.0 and 0.0 <= check.d1_reward <= 1.0
        assert (r == 1.0) == check.correct


def encode(task: CountdownTask, answers: list[str]) -> torch.Tensor:
    return torch.tensor([ALPHABET.encode(a, task.seq_len) for a in answers])


@pytest.fixture(scope="module")
def small() -> CountdownTask:
    return CountdownTask(num_numbers=(3, 4), test_size=30, pretrain_size=300, rl_size=300)


def test_task_tensors_and_reward_functions_agree(small: CountdownTask):
    prompts = [Prompt("p", "numbers_3", P)] * 4
    answers = ["25+3*7", "25+3+7", "25+3", "(("]
    x1 = encode(small, answers)
    assert small.answers(x1) == answers
    assert small.correct(x1, prompts).tolist() == [True, False, False, False]
    assert small.format_ok(x1, prompts).tolist() == [True, True, False, False]
    partial = torch.tensor([1.0, 0.1 + 0.2 + 0.2 * 35 / 46, 0.1 + 0.2 * 2 / 3, 0.0])
    assert torch.allclose(small.reward(x1, prompts), partial)
    assert torch.allclose(countdown_rewards.partial_reward(x1, prompts), partial)
    assert countdown_rewards.format_reward(x1, prompts).tolist() == [1.0, 1.0, 0.0, 0.0]
    assert countdown_rewards.correct_reward(x1, prompts).tolist() == [1.0, 0.0, 0.0, 0.0]
    assert torch.allclose(countdown_rewards.d1_reward(x1, prompts), torch.tensor([1.0, 0.1, 0.1, 0.0]))
    d1 = CountdownTask(num_numbers=(3, 4), test_size=30, pretrain_size=300, rl_size=300, reward="d1")
    assert torch.allclose(d1.reward(x1, prompts), torch.tensor([1.0, 0.1, 0.1, 0.0]))
    with pytest.raises(ValueError, match="x1 has 4 rows but 1 prompts"):
        countdown_rewards.format_reward(x1, prompts[:1])


def test_the_answer_stops_at_the_first_eos(small: CountdownTask):
    x1 = encode(small, ["25+3*7"])
    x1[0, 7:] = 5  # digits after the [EOS] at position 6 are ignored
    assert small.answers(x1) == ["25+3*7"]
    assert bool(small.correct(x1, [Prompt("p", "numbers_3", P)]).all())
    full = torch.full((1, small.seq_len), ALPHABET.symbols.index("1"))  # no [EOS]: all L characters
    assert small.answers(full) == ["1" * small.seq_len]


def test_splits_are_seeded_disjoint_by_instance_and_solvable(small: CountdownTask):
    again = CountdownTask(num_numbers=(3, 4), test_size=30, pretrain_size=300, rl_size=300)
    other = CountdownTask(num_numbers=(3, 4), test_size=30, pretrain_size=300, rl_size=300, seed=1)
    keys = {s: {p.spec.key for p in small.prompts(s)} for s in SPLITS}
    for s in SPLITS:
        assert small.prompts(s) == again.prompts(s) and small.prompts(s) != other.prompts(s)
        assert len(keys[s]) == len(small.prompts(s))  # no instance twice, even reordered
    # the same numbers (in any order) with the same target never sit in two splits
    assert not keys["test"] & keys["pretrain"] and not keys["test"] & keys["rl"] and not keys["pretrain"] & keys["rl"]
    for p in small.prompts("test"):  # independent check by exhaustive search
        assert solve(p.spec.numbers, p.spec.target) is not None
        assert check_answer(p.spec.solution, p.spec).correct
        assert len(p.spec.numbers) == int(p.category[-1]) and 1 <= p.spec.target <= 100
        assert all(1 <= n <= 100 for n in p.spec.numbers)


def test_a_small_instance_space_still_gives_disjoint_splits():
    # numbers 1..6 and targets 1..12: the same numbers come up often, in any order
    tight = CountdownTask(max_number=6, max_target=12, test_size=20, pretrain_size=40, rl_size=40)
    keys = {s: [p.spec.key for p in tight.prompts(s)] for s in SPLITS}
    every = keys["test"] + keys["pretrain"] + keys["rl"]
    assert len(every) == len(set(every)) == 100
    assert CountdownProblem((3, 7, 25), 46, "").key == CountdownProblem((25, 3, 7), 46, "").key


def test_solver_on_hand_instances():
    assert check_answer(solve((3, 7, 25), 46), P).correct
    assert solve((1, 1, 1), 100) is None
    assert solve((4, 6, 3), 2) is not None  # needs a fraction on the way (4/6*3) or 6/3*... any will do
    sol = solve((2, 3, 5, 7), 1)
    assert sol is not None and check_answer(sol, CountdownProblem((2, 3, 5, 7), 1, "")).correct


def test_every_default_test_instance_is_solvable_by_exhaustive_search(countdown_task: CountdownTask):
    for p in countdown_task.prompts("test"):
        assert solve(p.spec.numbers, p.spec.target) is not None, p.text


def test_sizes_prompts_and_answer_length(small: CountdownTask, countdown_task: CountdownTask):
    t = countdown_task
    assert (t.vocab_size, t.seq_len, t.prompt_len, t.categories) == (17, 15, 34, ("numbers_3",))
    assert {s: len(t.prompts(s)) for s in SPLITS} == {"pretrain": 4000, "rl": 2000, "test": 256}
    assert small.seq_len == 4 * 3 + 3 + 4 + 2 and small.categories == ("numbers_3", "numbers_4")
    p = t.prompts("test")[0]
    assert p.text == f"Numbers: [{', '.join(map(str, p.spec.numbers))}]\nTarget: {p.spec.target}"
    instruct = CountdownTask(test_size=30, pretrain_size=300, rl_size=300, prompt_style="instruct")
    assert instruct.prompts("test")[0].text.startswith("Using only the numbers") and instruct.prompt_len > 200
    for split in SPLITS:  # every reference solution fits the answer length
        assert max(len(q.spec.solution) for q in small.prompts(split)) <= small.seq_len


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"num_numbers": (5,)}, "num_numbers"),
        ({"num_numbers": (3, 3)}, "num_numbers"),
        ({"max_number": 1}, "max_number"),
        ({"test_size": 0}, "test_size"),
        ({"reward": "dense"}, "reward must be one of"),
        ({"prompt_style": "chat"}, "prompt_style"),
        ({"answer_len": 5}, "answer_len=5"),
        ({"prompt_len": 10}, "prompt_len=10 is shorter than its longest prompt"),
        ({"max_number": 3, "max_target": 3, "test_size": 200}, "distinct instances"),
    ],
)
def test_constructor_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        CountdownTask(**{"pretrain_size": 300, "rl_size": 300, "test_size": 30, **kwargs})
