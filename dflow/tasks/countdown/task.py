"""``CountdownTask``: reach a target with each given number exactly once (d1's Countdown protocol)."""

from __future__ import annotations

import random
from functools import lru_cache
from typing import Any

import numpy as np

from dflow.tasks.base import Prompt, check_positive_int
from dflow.tasks.countdown.solver import CountdownProblem, random_problem
from dflow.tasks.countdown.verify import check_answer
from dflow.tasks.reasoning import AnswerAlphabet, ReasoningTask, Verdict

# value 0 ends the answer; then the digits, the four operators and the parentheses (V = 17)
ALPHABET = AnswerAlphabet(("",) + tuple("0123456789+-*/()"), eos=True)
PROMPT_STYLES = ("compact", "instruct")
REWARDS = ("partial", "d1")
INSTRUCTION = (
    "Using only the numbers in the list, write an arithmetic expression that equals the target. Use every "
    "number exactly once; you may use +, -, *, / and parentheses. Reply with the expression alone, without "
    "an equals sign or the target."
)


def question(problem: CountdownProblem) -> str:
    """d1's evaluation question: ``"Numbers: [3, 7, 25]\\nTarget: 46"``."""
    return f"Numbers: [{', '.join(map(str, problem.numbers))}]\nTarget: {problem.target}"


def prompt_text(problem: CountdownProblem, style: str) -> str:
    """``compact``: the question alone; ``instruct``: an instruction, a blank line, the question."""
    return question(problem) if style == "compact" else f"{INSTRUCTION}\n\n{question(problem)}"


@lru_cache(maxsize=8)
def build_problems(
    num_numbers: tuple[int, ...], max_number: int, max_target: int, sizes: tuple[int, int, int], seed: int
) -> dict[str, tuple[tuple[str, CountdownProblem], ...]]:
    """``(category, problem)`` pairs per split. Per category one seeded stream of instances; an
    instance whose key (multiset of numbers, target) was drawn before is skipped, and the first
    ``sizes[0]`` keys go to ``test``, the next ``sizes[1]`` to ``pretrain`` and ``sizes[2]`` to
    ``rl``. So no test instance appears in training, not even with its numbers reordered."""
    out: dict[str, list[tuple[str, CountdownProblem]]] = {"test": [], "pretrain": [], "rl": []}
    for n in num_numbers:
        rng = random.Random(int(np.random.default_rng([seed, n]).integers(2**62)))
        seen: set[tuple[tuple[int, ...], int]] = set()
        chosen: list[CountdownProblem] = []
        tries, need = 0, sum(sizes)
        while len(chosen) < need:
            tries += 1
            if tries > 20 * need + 1000:
                raise ValueError(
                    f"countdown: only {len(chosen)} distinct instances with num_numbers={n}, max_number={max_number}, "
                    f"max_target={max_target} after {tries} draws; the splits need {need}: lower the sizes or widen "
                    "the ranges"
                )
            problem = random_problem(rng, n, max_number, max_target)
            if problem.key not in seen:
                seen.add(problem.key)
                chosen.append(problem)
        bounds = np.cumsum((0,) + sizes)
        for split, lo, hi in zip(("test", "pretrain", "rl"), bounds[:-1], bounds[1:], strict=True):
            out[split].extend((f"numbers_{n}", p) for p in chosen[lo:hi])
    return {split: tuple(items) for split, items in out.items()}


class CountdownTask(ReasoningTask):
    """Countdown: given 3 (or 4) numbers and a target, write an expression that uses each number
    exactly once with ``+ - * /`` and parentheses and equals the target.

    Output: the expression as ``L`` characters of the alphabet ``[EOS] 0-9 + - * / ( )`` (``V = 17``),
    ended by ``[EOS]`` (the answer is the text before the first ``[EOS]``). Verifier and rewards:
    :mod:`dflow.tasks.countdown.verify` (exact rational arithmetic; ``correct`` = right numbers and
    exact value). Categories ``numbers_<n>`` for each entry of ``num_numbers``.

    Args:
        num_numbers: numbers per instance, one category each: ``(3,)`` is d1's ``cd3`` protocol,
            ``(3, 4)`` adds the harder 4-number category.
        max_number: the numbers are drawn from ``[1, max_number]`` (d1's data: 1..100).
        max_target: targets lie in ``[1, max_target]`` (d1's data: 1..100).
        test_size / pretrain_size / rl_size: instances per category in each split (d1 tests 256).
        reward: the training reward: ``"partial"`` (default) or ``"d1"`` (see ``verify``).
        prompt_style: ``"compact"`` (d1's question ``Numbers: [...]\\nTarget: t``, for tiny bases)
            or ``"instruct"`` (an instruction first, for instruct models).
        tokenizer: ``None`` (the in-code character tokenizer) or a local tokenizer folder.
        chat_template: wrap prompts in the tokenizer's chat template (default: when a folder is given).
        prompt_len: ``Lc``; ``None`` takes the longest prompt of the splits.
        answer_len: ``L``; ``None`` fits the longest expression with the fewest parentheses plus 2
            characters for one redundant pair.
        seed: seeds the instances.
    """

    name = "countdown"
    alphabet = ALPHABET

    def __init__(
        self,
        num_numbers: tuple[int, ...] = (3,),
        max_number: int = 100,
        max_target: int = 100,
        test_size: int = 256,
        pretrain_size: int = 4000,
        rl_size: int = 2000,
        reward: str = "partial",
        prompt_style: str = "compact",
        tokenizer: str | None = None,
        chat_template: bool | None = None,
        prompt_len: int | None = None,
        answer_len: int | None = None,
        seed: int = 0,
    ) -> None:
        num_numbers = tuple(num_numbers)
        if not num_numbers or len(set(num_numbers)) != len(num_numbers) or any(n not in (2, 3, 4) for n in num_numbers):
            raise ValueError(f"num_numbers must be distinct values in {{2, 3, 4}}, got {num_numbers!r}")
        check_positive_int(max_number, "max_number", minimum=2)
        check_positive_int(max_target, "max_target")
        sizes = (
            check_positive_int(test_size, "test_size"),
            check_positive_int(pretrain_size, "pretrain_size"),
            check_positive_int(rl_size, "rl_size"),
        )
        if reward not in REWARDS:
            raise ValueError(f"reward must be one of {REWARDS}, got {reward!r}")
        if prompt_style not in PROMPT_STYLES:
            raise ValueError(f"prompt_style must be one of {PROMPT_STYLES}, got {prompt_style!r}")
        self.num_numbers, self.max_number, self.max_target = num_numbers, max_number, max_target
        self.reward_kind, self.prompt_style = reward, prompt_style
        self.categories = tuple(f"numbers_{n}" for n in num_numbers)
        problems = build_problems(num_numbers, max_number, max_target, sizes, seed)
        prompts = {
            split: tuple(Prompt(prompt_text(p, prompt_style), cat, p) for cat, p in items)
            for split, items in problems.items()
        }
        n, digits = max(num_numbers), len(str(max_number))
        fewest = n * digits + (n - 1) + 2 * (n - 2)  # literals, operators, at most n-2 needed pairs
        if answer_len is None:
            answer_len = fewest + 2
        elif check_positive_int(answer_len, "answer_len") < fewest:
            raise ValueError(f"answer_len={answer_len} is shorter than the longest expression ({fewest} characters)")
        self._init_text(prompts, answer_len, tokenizer, chat_template, prompt_len)

    def judge(self, answer: str, spec: Any) -> Verdict:
        check = check_answer(answer, spec)
        reward = check.partial_reward(spec.target) if self.reward_kind == "partial" else check.d1_reward
        return Verdict(reward, check.correct, bool(check.format_reward), check.detail)

    def reference_answer(self, spec: Any, rng: np.random.Generator) -> str:
        return spec.solution

    def summary(self, spec: Any) -> str:
        return f"{list(spec.numbers)} -> {spec.target}"

    def check_prompts(self, prompts) -> None:
        super().check_prompts(prompts)
        for p in prompts:
            if not isinstance(p.spec, CountdownProblem):
                raise ValueError(f"prompt {p.text!r} has spec {p.spec!r}, expected a CountdownProblem")
