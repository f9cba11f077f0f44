"""Multi-step integer word problems from templates (GSM8K-shaped, answer a number).

A problem is a start quantity and ``k`` operations on it, told as a short story about one person and
one kind of item; ``k`` is the difficulty. Every intermediate value is a positive integer at most
``max_value`` (a division only when exact, a subtraction never reaching 0), and every operand of
``+`` / ``-`` is at most ``max_operand``; ``*`` takes 2..5 and ``/`` 2..9.

Example (``k = 3``)::

    Mia has 12 stickers. She buys 5 more stickers. The next day she has 3 times as many stickers as
    before. She gives 4 of them to a friend. How many stickers does Mia have now?

    reference steps: 12+5=17, 17*3=51, 51-4=47; answer 47
"""

from __future__ import annotations

import random
from dataclasses import dataclass

NAMES = (
    ("Ava", "she"), ("Ben", "he"), ("Chloe", "she"), ("Dan", "he"), ("Ella", "she"), ("Finn", "he"),
    ("Grace", "she"), ("Hugo", "he"), ("Iris", "she"), ("Jack", "he"), ("Kate", "she"), ("Leo", "he"),
    ("Mia", "she"), ("Noah", "he"), ("Olive", "she"), ("Paul", "he"), ("Rosa", "she"), ("Sam", "he"),
)  # fmt: skip
ITEMS = (
    "apples", "marbles", "stickers", "coins", "pencils", "cookies", "stamps", "shells", "cards",
    "books", "eggs", "beads", "tickets", "flowers", "buttons",
)  # fmt: skip
OTHERS = ("a friend", "a neighbour", "a classmate", "a cousin", "the teacher")
START = ("{name} has {a} {items}.", "{name} collects {a} {items}.", "{name} starts the day with {a} {items}.")
TEMPLATES = {
    "+": ("{P} buys {b} more {items}.", "{P} gets {b} more {items} from {other}.", "{P} finds {b} more {items}."),
    "-": ("{P} gives {b} of them to {other}.", "{P} loses {b} {items}.", "{P} sells {b} of the {items}."),
    "*": (
        "The next day {p} has {b} times as many {items} as before.",
        "After that, {p} has {b} times as many {items} as a moment ago.",
    ),
    "/": (
        "{P} splits the {items} into {b} equal piles and keeps one pile.",
        "{P} divides the {items} into {b} equal shares and keeps one share.",
    ),
}
QUESTION = "How many {items} does {name} have now?"
MULTIPLIERS = (2, 3, 4, 5)
DIVISORS = (2, 3, 4, 5, 6, 7, 8, 9)


@dataclass(frozen=True)
class ArithmeticProblem:
    """One word problem.

    Attributes:
        story: the problem as text (the question included).
        start: the start quantity.
        ops: ``(operator, operand)`` of each step, operators in ``+ - * /``.
    """

    story: str
    start: int
    ops: tuple[tuple[str, int], ...]

    @property
    def values(self) -> tuple[int, ...]:
        """The quantity after each step; the last one is the answer."""
        out, x = [], self.start
        for op, b in self.ops:
            x = x + b if op == "+" else x - b if op == "-" else x * b if op == "*" else x // b
            out.append(x)
        return tuple(out)

    @property
    def answer(self) -> int:
        return self.values[-1]

    @property
    def steps(self) -> tuple[str, ...]:
        """The reference calculations, ``"12+5=17"`` per step."""
        before = (self.start,) + self.values[:-1]
        return tuple(f"{x}{op}{b}={y}" for x, (op, b), y in zip(before, self.ops, self.values, strict=True))

    @property
    def key(self) -> tuple[int, tuple[tuple[str, int], ...]]:
        """What makes two problems the same: the numbers and operations, whatever the wording."""
        return self.start, self.ops


def random_problem(rng: random.Random, num_steps: int, max_value: int, max_operand: int) -> ArithmeticProblem:
    """A problem of ``num_steps`` operations, each drawn among the ones that keep the bounds (with
    ``2 <= max_value``: ``+`` is possible below ``max_value``, ``-`` at it)."""
    name, pronoun = NAMES[rng.randrange(len(NAMES))]
    items, other = ITEMS[rng.randrange(len(ITEMS))], OTHERS[rng.randrange(len(OTHERS))]
    start = x = rng.randint(2, min(max_operand, max_value))
    words = {"name": name, "p": pronoun, "P": pronoun.capitalize(), "items": items, "other": other}
    sentences = [rng.choice(START).format(a=x, **words)]
    ops: list[tuple[str, int]] = []
    for _ in range(num_steps):
        choices = {  # the operands each operator may take here
            "+": range(1, min(max_operand, max_value - x) + 1),
            "-": range(1, min(x - 1, max_operand) + 1),  # the quantity stays >= 1
            "*": [b for b in MULTIPLIERS if x * b <= max_value],
            "/": [b for b in DIVISORS if x % b == 0],
        }
        op = rng.choice([o for o, bs in choices.items() if len(bs)])
        b = rng.choice(choices[op])
        x = x + b if op == "+" else x - b if op == "-" else x * b if op == "*" else x // b
        ops.append((op, b))
        sentences.append(rng.choice(TEMPLATES[op]).format(b=b, **words))
    sentences.append(QUESTION.format(**words))
    return ArithmeticProblem(" ".join(sentences), start, tuple(ops))
