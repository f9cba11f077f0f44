"""The arithmetic verifier: read the final number, check the worked steps, score.

Answer grammar (ASCII only)::

    answer := item ("," item)*
    item   := NUMBER OP NUMBER "=" NUMBER        (a calculation, e.g. "12+5=17")
            | NUMBER                             (a bare number: the last item only)
    NUMBER := "0" | [1-9][0-9]*                  OP := "+" | "-" | "*" | "/"

So both ``"47"`` (the number alone) and ``"12+5=17,17*3=51,51-4=47"`` (worked steps) are well formed.

- ``final``: the last number in the text, GSM8K's rule (a ``-`` right before it is its sign unless
  a digit precedes the ``-``); ``None`` when there is none, when it has a leading zero, or when the
  text is longer than ``MAX_CHARS`` (no big-integer parse of junk).
- ``format_ok``: the text matches the grammar.
- ``correct``: ``final == answer``, exactly (integers).
- ``step_credit``: the fraction of the reference's intermediate values (all but the answer) that
  appear as the result of a true calculation in the answer (``a op b = c`` with ``c`` exactly
  ``a op b``; a division only when exact); 0 for a one-step problem.

Reward, in ``[0, 1]`` and 1 exactly when ``correct``: ``1`` when correct, else
``0.2 * format_ok + 0.3 * step_credit`` (at most 0.5).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from dflow.tasks.arithmetic.problems import ArithmeticProblem

MAX_CHARS = 256
NUMBER = r"(?:0|[1-9][0-9]*)"
CALCULATION = re.compile(rf"({NUMBER})([-+*/])({NUMBER})=({NUMBER})")
BARE = re.compile(NUMBER)
LAST_NUMBER = re.compile(r"(-?)([0-9]+)(?!.*[0-9])", re.DOTALL)  # [0-9]: str.isdigit() accepts "３"


@dataclass(frozen=True)
class ArithmeticCheck:
    """What the verifier found in one answer."""

    final: int | None
    format_ok: bool
    correct: bool
    step_credit: float
    detail: str

    @property
    def reward(self) -> float:
        return 1.0 if self.correct else 0.2 * self.format_ok + 0.3 * self.step_credit


def final_number(text: str) -> int | None:
    """The last number of ``text`` (signed), or ``None``; never raises."""
    if not isinstance(text, str) or len(text) > MAX_CHARS:
        return None
    match = LAST_NUMBER.search(text)
    if match is None:
        return None
    sign, digits = match.groups()
    if len(digits) > 1 and digits[0] == "0":
        return None
    if sign and match.start() > 0 and text[match.start() - 1] in "0123456789":
        sign = ""  # "17-5": a subtraction, not a negative 5
    return -int(digits) if sign else int(digits)


def true_results(items: list[str]) -> list[int]:
    """The results ``c`` of the items that are true calculations ``a op b = c``."""
    out = []
    for item in items:
        match = CALCULATION.fullmatch(item)
        if match is None:
            continue
        a, op, b, c = int(match[1]), match[2], int(match[3]), int(match[4])
        if op == "/":
            ok = b != 0 and a == b * c
        else:
            ok = c == (a + b if op == "+" else a - b if op == "-" else a * b)
        if ok:
            out.append(c)
    return out


def check_answer(answer: str, problem: ArithmeticProblem) -> ArithmeticCheck:
    """Judge ``answer`` for ``problem``; never raises."""
    if not isinstance(answer, str) or len(answer) > MAX_CHARS:
        return ArithmeticCheck(None, False, False, 0.0, f"not an answer: longer than {MAX_CHARS} characters")
    items = answer.split(",")
    format_ok = bool(answer) and all(CALCULATION.fullmatch(i) for i in items[:-1])
    format_ok = format_ok and bool(CALCULATION.fullmatch(items[-1]) or BARE.fullmatch(items[-1]))
    final = final_number(answer)
    correct = final is not None and final == problem.answer
    wanted = problem.values[:-1]
    found = set(true_results(items))
    step_credit = sum(v in found for v in wanted) / len(wanted) if wanted else 0.0
    if final is None:
        detail = "no final number"
    else:
        detail = f"final {final}, {'the answer' if correct else f'not {problem.answer}'}"
    if wanted:
        detail += f"; {sum(v in found for v in wanted)} of {len(wanted)} intermediate values computed"
    if not format_ok:
        detail += "; malformed"
    return ArithmeticCheck(final, format_ok, correct, step_credit, detail)
