"""The Countdown verifier: parse, check the numbers, evaluate exactly, score.

With ``given`` the instance's numbers and ``used`` the literals of the answer (multisets):

- ``parses``: the answer is an expression (:func:`~dflow.tasks.countdown.expression.parse_expression`).
- ``numbers_ok``: ``used == given``: each given number exactly once, nothing else.
- ``correct``: ``parses and numbers_ok`` and the exact value equals the target.

Rewards, each in ``[0, 1]`` and 1 exactly when ``correct``:

- ``format``: ``parses and numbers_ok`` (d1 scores format and correctness separately).
- ``d1``: d1's ``compute_score``: 1 when correct, 0.1 for any other answer that parses, else 0
  (d1 pays 0.1 for anything inside its ``<answer>`` tags; dflow's answers have no tags, so the
  0.1 goes to an answer that parses).
- ``partial`` (the task's training reward): 1 when correct; 0 when it does not parse; otherwise
  ``0.1 + 0.2 * match + 0.2 * closeness``, where ``match = |used ∩ given| / max(|used|, |given|)``
  and ``closeness = max(0, 1 - |value - target| / target)`` counts only when ``numbers_ok`` (else
  writing the target itself would pay). An answer that is not correct earns less than 0.5.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from fractions import Fraction

from dflow.tasks.countdown.expression import evaluate, parse_expression
from dflow.tasks.countdown.solver import CountdownProblem

FORMAT_SCORE = 0.1  # d1's format_score


@dataclass(frozen=True)
class CountdownCheck:
    """What the verifier found in one answer."""

    parses: bool
    numbers_ok: bool
    match: float  # |used ∩ given| / max(|used|, |given|)
    value: Fraction | None  # None: did not parse, or a division by zero
    correct: bool
    detail: str

    @property
    def format_reward(self) -> float:
        return float(self.parses and self.numbers_ok)

    @property
    def d1_reward(self) -> float:
        return 1.0 if self.correct else FORMAT_SCORE if self.parses else 0.0

    def partial_reward(self, target: int) -> float:
        if self.correct:
            return 1.0
        if not self.parses:
            return 0.0
        closeness = 0.0
        if self.numbers_ok and self.value is not None:
            gap = abs(self.value - target) / target  # exact: a huge value never overflows a float
            closeness = 0.0 if gap >= 1 else float(1 - gap)
        return FORMAT_SCORE + 0.2 * self.match + 0.2 * closeness


def check_answer(answer: str, problem: CountdownProblem) -> CountdownCheck:
    """Judge ``answer`` for ``problem``; never raises."""
    parsed = parse_expression(answer)
    if parsed.expr is None:
        return CountdownCheck(False, False, 0.0, None, False, f"does not parse: {parsed.error}")
    used, given = Counter(parsed.expr.numbers()), Counter(problem.numbers)
    common = sum((used & given).values())
    match = common / max(sum(used.values()), sum(given.values()))
    numbers_ok = used == given
    value = evaluate(parsed.expr)
    correct = numbers_ok and value is not None and value == problem.target
    return CountdownCheck(True, numbers_ok, match, value, correct, _detail(used, given, value, problem.target))


def _detail(used: Counter, given: Counter, value: Fraction | None, target: int) -> str:
    problems = []
    for n in sorted(used | given):
        if used[n] > given[n]:
            problems.append(f"{n} is not given" if given[n] == 0 else f"uses {n} {used[n]} times (given {given[n]})")
        elif used[n] < given[n]:
            problems.append(f"misses {n}")
    shown = "division by zero" if value is None else f"= {value}"
    if value is not None and value.denominator != 1:
        shown += " (not an integer)"
    if problems:
        return f"{shown}; {', '.join(problems)}"
    if value is None:
        return shown
    return f"{shown}, the target" if value == target else f"{shown}, not {target}"
