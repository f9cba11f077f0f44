"""Countdown instances: random generation (a witness expression) and an exhaustive solver.

``random_problem`` draws the numbers, then combines two random items at a time, with an operator
drawn among those whose result is a positive integer (the game's own rule, for the reference
solutions), until every number is used; it keeps the result when it is a target in range. Every
instance is therefore solvable, with its witness stored as ``solution``.

``solve`` is an independent check by exhaustive search: every way of combining the numbers with
``+ - * /`` in exact rational arithmetic (fractions in intermediate results allowed, as the verifier
allows them), by dynamic programming over subsets of the numbers.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from fractions import Fraction

from dflow.tasks.countdown.expression import BinOp, Expr, Num, to_text


@dataclass(frozen=True)
class CountdownProblem:
    """One instance: reach ``target`` using each of ``numbers`` exactly once.

    Attributes:
        numbers: the numbers in the order the prompt shows them.
        target: a positive integer.
        solution: one correct expression (the generator's witness), e.g. ``"25+3*7"``.
    """

    numbers: tuple[int, ...]
    target: int
    solution: str

    @property
    def key(self) -> tuple[tuple[int, ...], int]:
        """What makes two instances the same: the multiset of numbers and the target."""
        return tuple(sorted(self.numbers)), self.target


def random_problem(
    rng: random.Random, num_numbers: int, max_number: int, max_target: int, max_tries: int = 100_000
) -> CountdownProblem:
    """A solvable instance with ``num_numbers`` numbers in ``[1, max_number]`` and a target in
    ``[1, max_target]`` (see the module doc). ``rng`` is a ``random.Random`` (this loop runs about ten
    times per instance; numpy's per-call overhead made it 20x slower)."""
    for _ in range(max_tries):
        numbers = [1 + int(rng.random() * max_number) for _ in range(num_numbers)]
        found = _random_expression(numbers, rng)
        if 1 <= found[0] <= max_target:
            shown = list(numbers)
            rng.shuffle(shown)
            return CountdownProblem(tuple(shown), found[0], to_text(found[1]))
    raise RuntimeError(f"no countdown instance found in {max_tries} tries (max_target={max_target} too small?)")


def _random_expression(numbers: list[int], rng: random.Random) -> tuple[int, Expr]:
    """Combine two random items with an operator drawn among those that give a positive integer
    (larger operand first) until one item is left: ``(value, expression)``. Integers only, so no
    fractions are built while draws outside the target range are thrown away."""
    items: list[tuple[int, Expr]] = [(v, Num(v)) for v in numbers]
    while len(items) > 1:
        k = len(items)
        i, j = int(rng.random() * k), int(rng.random() * (k - 1))
        j += j >= i  # a second, different index
        (a, ea), (b, eb) = items[i], items[j]
        if a < b:
            (a, ea), (b, eb) = (b, eb), (a, ea)
        ops = "+*" + ("-" if a > b else "") + ("/" if a % b == 0 else "")
        op = ops[int(rng.random() * len(ops))]
        value = a + b if op == "+" else a * b if op == "*" else a - b if op == "-" else a // b
        items = [e for n, e in enumerate(items) if n not in (i, j)] + [(value, BinOp(op, ea, eb))]
    return items[0]


def reachable(numbers: tuple[int, ...]) -> dict[Fraction, Expr]:
    """Every value an expression using each number exactly once reaches, with one expression each."""
    n = len(numbers)
    table: dict[int, dict[Fraction, Expr]] = {1 << i: {Fraction(v): Num(v)} for i, v in enumerate(numbers)}
    for mask in range(1, 1 << n):
        if mask in table:
            continue
        values: dict[Fraction, Expr] = {}
        sub = (mask - 1) & mask
        while sub:  # every split of mask into two non-empty parts, both orders
            for a, ea in table[sub].items():
                for b, eb in table[mask ^ sub].items():
                    for op, v in (("+", a + b), ("-", a - b), ("*", a * b), ("/", a / b if b else None)):
                        if v is not None and v not in values:
                            values[v] = BinOp(op, ea, eb)
            sub = (sub - 1) & mask
        table[mask] = values
    return table[(1 << n) - 1]


def solve(numbers: tuple[int, ...], target: int) -> str | None:
    """An expression that uses each number once and equals ``target`` exactly, or ``None``."""
    expr = reachable(tuple(numbers)).get(Fraction(target))
    return None if expr is None else to_text(expr)
