"""``ArithmeticTask``: multi-step integer word problems (GSM8K-shaped), difficulty by step count."""

from __future__ import annotations

import random
import re
from functools import lru_cache
from typing import Any

import numpy as np

from dflow.tasks.arithmetic import problems as templates
from dflow.tasks.arithmetic.problems import ArithmeticProblem, random_problem
from dflow.tasks.arithmetic.verify import check_answer
from dflow.tasks.base import Prompt, check_positive_int
from dflow.tasks.reasoning import AnswerAlphabet, ReasoningTask, Verdict

# value 0 ends the answer; then the digits, the operators, "=" and the step separator "," (V = 17)
ALPHABET = AnswerAlphabet(("",) + tuple("0123456789+-*/=,"), eos=True)
ANSWER_FORMATS = ("steps", "number")
PROMPT_STYLES = ("compact", "instruct")
PROMPT_TOKENS = ("words", "chars")
INSTRUCTIONS = {
    "steps": (
        "Solve the word problem. Write each calculation as a=b, for example 12+5=17, separated by commas and "
        "with no spaces; the result of the last calculation is the answer."
    ),
    "number": "Solve the word problem. Reply with the final number only.",
}


def _words(*texts: str) -> tuple[str, ...]:
    """The letter runs of ``texts`` (template fields such as ``{items}`` left out), first seen first."""
    runs = re.findall(r"[A-Za-z]+", " ".join(re.sub(r"\{\w+\}", " ", text) for text in texts))
    return tuple(dict.fromkeys(runs))


# Every word a prompt of either style can hold, in a fixed order (the word tokenizer's ids follow it):
# the templates, the question, the names, their pronouns (also capitalised, as sentences start), the
# items, the other people and the instructions.
WORDS = _words(
    *templates.START,
    *(t for variants in templates.TEMPLATES.values() for t in variants),
    templates.QUESTION,
    *(name for name, _ in templates.NAMES),
    *sorted({p for _, p in templates.NAMES} | {p.capitalize() for _, p in templates.NAMES}),
    *templates.ITEMS,
    *templates.OTHERS,
    *INSTRUCTIONS.values(),
)


@lru_cache(maxsize=8)
def build_problems(
    steps: tuple[int, ...], max_value: int, max_operand: int, sizes: tuple[int, int, int], seed: int
) -> dict[str, tuple[tuple[str, ArithmeticProblem], ...]]:
    """``(category, problem)`` pairs per split. Per difficulty one seeded stream; a problem whose
    key (start value and operations, whatever the wording) was drawn before is skipped; the first
    ``sizes[0]`` go to ``test``, the next ``sizes[1]`` to ``pretrain`` and ``sizes[2]`` to ``rl``. So
    no test calculation appears in training, in any wording."""
    out: dict[str, list[tuple[str, ArithmeticProblem]]] = {"test": [], "pretrain": [], "rl": []}
    for k in steps:
        rng = random.Random(int(np.random.default_rng([seed, k]).integers(2**62)))
        seen: set[Any] = set()
        chosen: list[ArithmeticProblem] = []
        need, tries = sum(sizes), 0
        while len(chosen) < need:
            tries += 1
            if tries > 20 * need + 1000:
                raise ValueError(
                    f"arithmetic: only {len(chosen)} distinct problems with {k} steps, max_value={max_value}, "
                    f"max_operand={max_operand}; the splits need {need}: lower the sizes or widen the ranges"
                )
            problem = random_problem(rng, k, max_value, max_operand)
            if problem.key not in seen:
                seen.add(problem.key)
                chosen.append(problem)
        bounds = np.cumsum((0,) + sizes)
        for split, lo, hi in zip(("test", "pretrain", "rl"), bounds[:-1], bounds[1:], strict=True):
            out[split].extend((f"steps_{k}", p) for p in chosen[lo:hi])
    return {split: tuple(items) for split, items in out.items()}


class ArithmeticTask(ReasoningTask):
    """Integer word problems of ``k`` steps from templates (see :mod:`dflow.tasks.arithmetic.problems`),
    verified numerically (see :mod:`dflow.tasks.arithmetic.verify`).

    Output: the answer as ``L`` characters of ``[EOS] 0-9 + - * / = ,`` (``V = 17``), ended by
    ``[EOS]``: worked steps ``"12+5=17,17*3=51,51-4=47"`` or the number alone ``"47"`` (both are
    read; ``answer_format`` picks which the ground truth shows and the instruction asks for).
    Categories ``steps_<k>``.

    Args:
        steps: the difficulties (operations per problem), one category each.
        max_value: bound on every intermediate value and the answer.
        max_operand: bound on the start value and the operands of ``+`` and ``-``.
        test_size / pretrain_size / rl_size: problems per category in each split.
        answer_format: ``"steps"`` (default) or ``"number"``.
        prompt_style: ``"compact"`` (the story alone) or ``"instruct"`` (an instruction first).
        prompt_tokens: how the in-code tokenizer (``tokenizer=None``) cuts a prompt: ``"words"``
            (default; a token per word of :data:`WORDS` or digit, with its space, and per other
            character: 46 tokens for the longest compact prompt of the embedded bases' task, against
            200 characters) or ``"chars"`` (a token per character). Ignored with a ``tokenizer``
            folder. The prompt is most of every pass's tokens, so words make RL about 3x cheaper.
        tokenizer / chat_template / prompt_len: as in :class:`~dflow.tasks.countdown.CountdownTask`.
        answer_len: ``L``; ``None`` fits the longest reference answer the bounds allow.
        seed: seeds the problems.
    """

    name = "arithmetic"
    alphabet = ALPHABET

    def __init__(
        self,
        steps: tuple[int, ...] = (2, 3, 4),
        max_value: int = 999,
        max_operand: int = 50,
        test_size: int = 100,
        pretrain_size: int = 2000,
        rl_size: int = 1000,
        answer_format: str = "steps",
        prompt_style: str = "compact",
        prompt_tokens: str = "words",
        tokenizer: str | None = None,
        chat_template: bool | None = None,
        prompt_len: int | None = None,
        answer_len: int | None = None,
        seed: int = 0,
    ) -> None:
        steps = tuple(steps)
        if not steps or len(set(steps)) != len(steps) or any(not isinstance(k, int) or not 1 <= k <= 8 for k in steps):
            raise ValueError(f"steps must be distinct integers in [1, 8], got {steps!r}")
        check_positive_int(max_value, "max_value", minimum=10)
        check_positive_int(max_operand, "max_operand", minimum=2)
        sizes = (
            check_positive_int(test_size, "test_size"),
            check_positive_int(pretrain_size, "pretrain_size"),
            check_positive_int(rl_size, "rl_size"),
        )
        if answer_format not in ANSWER_FORMATS:
            raise ValueError(f"answer_format must be one of {ANSWER_FORMATS}, got {answer_format!r}")
        if prompt_style not in PROMPT_STYLES:
            raise ValueError(f"prompt_style must be one of {PROMPT_STYLES}, got {prompt_style!r}")
        if prompt_tokens not in PROMPT_TOKENS:
            raise ValueError(f"prompt_tokens must be one of {PROMPT_TOKENS}, got {prompt_tokens!r}")
        self.steps, self.answer_format, self.prompt_style = steps, answer_format, prompt_style
        self.categories = tuple(f"steps_{k}" for k in steps)
        problems = build_problems(steps, max_value, max_operand, sizes, seed)
        prompts = {
            split: tuple(Prompt(self._prompt_text(p), cat, p) for cat, p in items) for split, items in problems.items()
        }
        digits, operand = len(str(max_value)), max(len(str(max_operand)), 1)
        longest = digits if answer_format == "number" else max(steps) * (2 * digits + operand + 3) - 1
        if answer_len is None:
            answer_len = longest
        elif check_positive_int(answer_len, "answer_len") < longest:
            raise ValueError(f"answer_len={answer_len} is shorter than the longest reference answer ({longest})")
        words = WORDS if prompt_tokens == "words" else None
        self._init_text(prompts, answer_len, tokenizer, chat_template, prompt_len, words)

    def _prompt_text(self, problem: ArithmeticProblem) -> str:
        if self.prompt_style == "compact":
            return problem.story
        return f"{INSTRUCTIONS[self.answer_format]}\n\n{problem.story}"

    def judge(self, answer: str, spec: Any) -> Verdict:
        check = check_answer(answer, spec)
        return Verdict(check.reward, check.correct, check.format_ok, check.detail)

    def reference_answer(self, spec: Any, rng: np.random.Generator) -> str:
        return ",".join(spec.steps) if self.answer_format == "steps" else str(spec.answer)

    def summary(self, spec: Any) -> str:
        return f"{spec.start} " + " ".join(f"{op}{b}" for op, b in spec.ops) + f" = {spec.answer}"

    def check_prompts(self, prompts) -> None:
        super().check_prompts(prompts)
        for p in prompts:
            if not isinstance(p.spec, ArithmeticProblem):
                raise ValueError(f"prompt {p.text!r} has spec {p.spec!r}, expected an ArithmeticProblem")
