"""A safe parser and exact evaluator for Countdown answers (never ``eval``).

Grammar (recursive descent over a whitelist; ASCII spaces, tabs and newlines between tokens are
skipped)::

    expr   := term   (("+" | "-") term)*
    term   := factor (("*" | "/") factor)*
    factor := NUMBER | "(" expr ")"
    NUMBER := "0" | [1-9][0-9]*          (ASCII digits only, no leading zeros, no sign)

Anything else is refused with a reason, never an exception: another character (a unary minus,
``**``, ``=``, a letter, a non-ASCII digit such as ``"３"``), an empty or unbalanced expression,
more than ``MAX_CHARS`` characters or ``MAX_DEPTH`` nested parentheses. Evaluation is exact, in
``fractions.Fraction``, so ``(4/6)*3`` is exactly 2 and a division by zero is reported as such.

Example::

    parsed = parse_expression("25+3*7")
    parsed.expr.value()            # Fraction(46, 1)
    parsed.expr.numbers()          # (25, 3, 7)
    to_text(parsed.expr)           # "25+3*7": the fewest parentheses that keep the meaning
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

MAX_CHARS = 256  # longer text is refused before parsing: answers are ~20 characters
MAX_DEPTH = 32  # nested parentheses; bounds the recursion
OPERATORS = "+-*/"
PRECEDENCE = {"+": 1, "-": 1, "*": 2, "/": 2}
DIGITS = "0123456789"  # str.isdigit() would accept "３" and "²"
WHITESPACE = " \t\n"


class EvaluationError(Exception):
    """A well-formed expression without a value (a division by zero)."""


@dataclass(frozen=True)
class Num:
    """A number literal."""

    value_: int

    def value(self) -> Fraction:
        return Fraction(self.value_)

    def numbers(self) -> tuple[int, ...]:
        return (self.value_,)


@dataclass(frozen=True)
class BinOp:
    """``left op right`` with ``op`` in ``+ - * /``."""

    op: str
    left: Num | BinOp
    right: Num | BinOp

    def value(self) -> Fraction:
        """The exact value; ``EvaluationError`` for a division by zero."""
        a, b = self.left.value(), self.right.value()
        if self.op == "+":
            return a + b
        if self.op == "-":
            return a - b
        if self.op == "*":
            return a * b
        if b == 0:
            raise EvaluationError("division by zero")
        return a / b

    def numbers(self) -> tuple[int, ...]:
        """The literals, left to right."""
        return self.left.numbers() + self.right.numbers()


Expr = Num | BinOp


@dataclass(frozen=True)
class Parsed:
    """``expr`` when the text parsed, else ``None`` and ``error`` says why."""

    expr: Expr | None
    error: str = ""


class _Refused(Exception):
    """Internal: the text is not an expression (caught in ``parse_expression``)."""


def _tokens(text: str) -> list[str]:
    out: list[str] = []
    i = 0
    while i < len(text):
        c = text[i]
        if c in WHITESPACE:
            i += 1
        elif c in DIGITS:
            j = i
            while j < len(text) and text[j] in DIGITS:
                j += 1
            if text[i] == "0" and j - i > 1:
                raise _Refused(f"number {text[i:j]!r} has a leading zero")
            out.append(text[i:j])
            i = j
        elif c in OPERATORS or c in "()":
            out.append(c)
            i += 1
        else:
            raise _Refused(f"character {c!r} is not allowed (digits, + - * /, parentheses)")
    return out


class _Parser:
    def __init__(self, tokens: list[str]) -> None:
        self.tokens, self.pos, self.depth = tokens, 0, 0

    def peek(self) -> str | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self) -> str:
        token = self.peek()
        if token is None:
            raise _Refused("the expression ends too early")
        self.pos += 1
        return token

    def expr(self) -> Expr:
        node = self.term()
        while self.peek() in ("+", "-"):
            op = self.take()
            node = BinOp(op, node, self.term())
        return node

    def term(self) -> Expr:
        node = self.factor()
        while self.peek() in ("*", "/"):
            op = self.take()
            node = BinOp(op, node, self.factor())
        return node

    def factor(self) -> Expr:
        token = self.take()
        if token == "(":
            self.depth += 1
            if self.depth > MAX_DEPTH:
                raise _Refused(f"more than {MAX_DEPTH} nested parentheses")
            node = self.expr()
            if self.take() != ")":
                raise _Refused("a '(' is not closed")
            self.depth -= 1
            return node
        if token[0] in DIGITS:
            return Num(int(token))
        raise _Refused(f"expected a number or '(' but found {token!r}")


def parse_expression(text: str) -> Parsed:
    """Parse ``text``; never raises (a refusal is ``Parsed(None, reason)``)."""
    if not isinstance(text, str):
        return Parsed(None, f"not text: {type(text).__name__}")
    if len(text) > MAX_CHARS:
        return Parsed(None, f"longer than {MAX_CHARS} characters")
    try:
        tokens = _tokens(text)
        if not tokens:
            return Parsed(None, "empty answer")
        parser = _Parser(tokens)
        expr = parser.expr()
        if parser.peek() is not None:
            return Parsed(None, f"unexpected {parser.peek()!r} after a complete expression")
        return Parsed(expr)
    except _Refused as err:
        return Parsed(None, str(err))


def evaluate(expr: Expr) -> Fraction | None:
    """The exact value, or ``None`` for a division by zero."""
    try:
        return expr.value()
    except EvaluationError:
        return None


def to_text(expr: Expr) -> str:
    """The expression with the fewest parentheses: a parenthesis only where precedence or the left
    associativity of ``-`` and ``/`` needs one. The text parses back to an expression with the same
    literals and the same exact value (not always the same tree: ``a+(b-c)`` prints as ``a+b-c``)."""
    if isinstance(expr, Num):
        return str(expr.value_)
    left, right = to_text(expr.left), to_text(expr.right)
    prec = PRECEDENCE[expr.op]
    if isinstance(expr.left, BinOp) and PRECEDENCE[expr.left.op] < prec:
        left = f"({left})"
    if isinstance(expr.right, BinOp):
        right_prec = PRECEDENCE[expr.right.op]
        if right_prec < prec or (right_prec == prec and expr.op in "-/"):
            right = f"({right})"
    return f"{left}{expr.op}{right}"
