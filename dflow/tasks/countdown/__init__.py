"""Countdown (d1's protocol): reach a target with each given number exactly once; a safe parser and
exact evaluator (never ``eval``), an exhaustive solver, and format / correctness / partial rewards."""

from dflow.tasks.countdown.expression import parse_expression, to_text
from dflow.tasks.countdown.solver import CountdownProblem, solve
from dflow.tasks.countdown.task import CountdownTask
from dflow.tasks.countdown.verify import CountdownCheck, check_answer

__all__ = [
    "CountdownCheck",
    "CountdownProblem",
    "CountdownTask",
    "check_answer",
    "parse_expression",
    "solve",
    "to_text",
]
