"""Arithmetic word problems: the final-number reader, the verifier's rewards on hand-made answers,
the generator's bounds and seeded disjoint splits, and the task's tensors.

reward = 1 if correct else 0.2 * format_ok + 0.3 * step_credit
"""

import random

import pytest
import torch

from dflow.tasks import ArithmeticTask
from dflow.tasks.arithmetic import ArithmeticProblem, check_answer, final_number
from dflow.tasks.arithmetic import rewards as arithmetic_rewards
from dflow.tasks.arithmetic.problems import random_problem
from dflow.tasks.arithmetic.task import ALPHABET
from dflow.tasks.arithmetic.verify import MAX_CHARS
from dflow.tasks.base import SPLITS, Prompt

# 12 +5 -> 17, *3 -> 51, -4 -> 47
P = ArithmeticProblem("story", 12, (("+", 5), ("*", 3), ("-", 4)))


def test_problem_values_and_steps():
    assert P.values == (17, 51, 47) and P.answer == 47
    assert P.steps == ("12+5=17", "17*3=51", "51-4=47")
    assert ArithmeticProblem("s", 40, (("/", 8), ("+", 3))).steps == ("40/8=5", "5+3=8")


@pytest.mark.parametrize(
    "text, number",
    [
        ("47", 47),
        ("12+5=17,17*3=51", 51),
        ("17-5", 5),  # a subtraction, not -5
        ("-3", -3),
        ("5=-3", -3),
        ("5,", 5),
        ("0", 0),
        ("", None),
        ("abc", None),
        ("007", None),  # a leading zero is not a number
        ("\uff14\uff17", None),  # full-width digits are not ASCII digits
        ("4\u00b2", 4),  # the superscript is not a digit either
        ("9" * (MAX_CHARS + 1), None),  # no big-integer parse of a huge string
        ("1" * 200, int("1" * 200)),  # long, but within the limit: read exactly
    ],
)
def test_final_number(text, number):
    assert final_number(text) == number


@pytest.mark.parametrize(
    "answer, correct, fmt, reward",
    [
        ("12+5=17,17*3=51,51-4=47", True, True, 1.0),
        ("47", True, True, 1.0),  # the number alone
        ("17,51,47", True, False, 1.0),  # bare numbers before the last: malformed, but the final number is right
        ("12+5=17,17*3=51,51-4=46", False, True, 0.2 + 0.3),  # both intermediate values computed
        ("12+5=17,17*3=50", False, True, 0.2 + 0.3 / 2),  # 17 right, 51 missed
        ("12+5=18,18*3=54,54-4=50", False, True, 0.2),  # true calculations, but not the problem's values
        ("12+6=17,17*2=51,51-4=46", False, True, 0.2),  # the right values from false calculations earn nothing
        ("12+5=17,,46", False, False, 0.3 / 2),
        ("46", False, True, 0.2),
        ("10/0=0,46", False, True, 0.2),  # a division by zero is a false calculation, never an error
        ("", False, False, 0.0),
        ("=,+", False, False, 0.0),
    ],
)
def test_rewards_on_hand_made_answers(answer, correct, fmt, reward):
    check = check_answer(answer, P)
    assert check.correct is correct and check.format_ok is fmt
    assert check.reward == pytest.approx(reward)


def test_details_and_one_step_problems():
    assert (
        check_answer("12+5=17,17*3=51,51-4=47", P).detail == "final 47, the answer; 2 of 2 intermediate values computed"
    )
    assert check_answer("x", P).detail == "no final number; 0 of 2 intermediate values computed; malformed"
    one = ArithmeticProblem("s", 12, (("+", 5),))
    assert check_answer("12+5=16", one).reward == pytest.approx(0.2)  # no intermediate values to credit
    assert check_answer("12+5=17", one).detail == "final 17, the answer"


def test_fuzzed_text_never_raises_and_scores_in_range():
    rng = random.Random(0)
    pool = "0123456789+-*/=,, x\n\uff14\U0001f600"
    for _ in range(3000):
        text = "".join(rng.choice(pool) for _ in range(rng.randint(0, 30)))
        check = check_answer(text, P)
        assert 0.0 <= check.reward <= 1.0 and (check.reward == 1.0) == check.correct


def test_generator_keeps_its_bounds():
    rng = random.Random(0)
    for k in (1, 2, 3, 4, 6):
        for _ in range(200):
            p = random_problem(rng, k, max_value=999, max_operand=50)
            assert len(p.ops) == k and 2 <= p.start <= 50
            assert all(1 <= v <= 999 for v in p.values)
            for op, b in p.ops:
                assert (op in "+-" and 1 <= b <= 50) or (op == "*" and 2 <= b <= 5) or (op == "/" and 2 <= b <= 9)
            assert p.story.endswith("have now?") and p.story.count(".") == k + 1


@pytest.fixture(scope="module")
def small() -> ArithmeticTask:
    return ArithmeticTask(test_size=40, pretrain_size=300, rl_size=300)


def test_splits_are_seeded_and_disjoint_by_calculation(small: ArithmeticTask):
    again = ArithmeticTask(test_size=40, pretrain_size=300, rl_size=300)
    other = ArithmeticTask(test_size=40, pretrain_size=300, rl_size=300, seed=1)
    keys = {s: {p.spec.key for p in small.prompts(s)} for s in SPLITS}
    for s in SPLITS:
        assert small.prompts(s) == again.prompts(s) and small.prompts(s) != other.prompts(s)
        assert len(keys[s]) == len(small.prompts(s))
    # a test calculation never appears in training, whatever the names and items around it
    assert not keys["test"] & keys["pretrain"] and not keys["test"] & keys["rl"] and not keys["pretrain"] & keys["rl"]
    assert {p.category for p in small.prompts("test")} == {"steps_2", "steps_3", "steps_4"}


def test_task_tensors_and_reward_functions_agree(small: ArithmeticTask):
    prompts = [Prompt("p", "steps_3", P)] * 3
    answers = ["12+5=17,17*3=51,51-4=47", "12+5=17,17*3=50", "47,"]
    x1 = torch.tensor([ALPHABET.encode(a, small.seq_len) for a in answers])
    assert small.answers(x1) == answers
    assert small.correct(x1, prompts).tolist() == [True, False, True]
    assert small.format_ok(x1, prompts).tolist() == [True, True, False]
    assert torch.allclose(small.reward(x1, prompts), torch.tensor([1.0, 0.35, 1.0]))
    assert arithmetic_rewards.correct_reward(x1, prompts).tolist() == [1.0, 0.0, 1.0]
    assert arithmetic_rewards.format_reward(x1, prompts).tolist() == [1.0, 1.0, 0.0]
    assert arithmetic_rewards.steps_reward(x1, prompts).tolist() == [1.0, 0.5, 0.0]


def test_sizes_answer_formats_and_prompt_styles(small: ArithmeticTask, arithmetic_task: ArithmeticTask):
    t = arithmetic_task
    assert (t.vocab_size, t.seq_len) == (17, 4 * (2 * 3 + 2 + 3) - 1)  # 4 steps of "999+50=999,"
    assert {s: len(t.prompts(s)) for s in SPLITS} == {"pretrain": 6000, "rl": 3000, "test": 300}
    number = ArithmeticTask(test_size=40, pretrain_size=300, rl_size=300, answer_format="number")
    assert number.seq_len == 3
    batch = number.sample_data(4, torch.Generator().manual_seed(0))
    assert number.answers(batch.x1) == [str(p.spec.answer) for p in batch.prompts]
    batch = small.sample_data(4, torch.Generator().manual_seed(0))
    assert small.answers(batch.x1) == [",".join(p.spec.steps) for p in batch.prompts]
    instruct = ArithmeticTask(test_size=40, pretrain_size=300, rl_size=300, prompt_style="instruct")
    p = instruct.prompts("test")[0]
    assert p.text.startswith("Solve the word problem.") and p.text.endswith(p.spec.story)
    assert small.prompts("test")[0].text == small.prompts("test")[0].spec.story


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"steps": (0,)}, "steps"),
        ({"steps": (2, 2)}, "steps"),
        ({"max_value": 5}, "max_value"),
        ({"answer_format": "latex"}, "answer_format"),
        ({"prompt_style": "chat"}, "prompt_style"),
        ({"answer_len": 10}, "answer_len=10"),
        ({"steps": (1,), "max_value": 10, "max_operand": 2, "test_size": 100}, "distinct problems"),
    ],
)
def test_constructor_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ArithmeticTask(**{"pretrain_size": 300, "rl_size": 300, "test_size": 40, **kwargs})
