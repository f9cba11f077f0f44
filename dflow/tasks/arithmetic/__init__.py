"""Multi-step integer word problems from templates (GSM8K-shaped), verified numerically."""

from dflow.tasks.arithmetic.problems import ArithmeticProblem
from dflow.tasks.arithmetic.task import ArithmeticTask
from dflow.tasks.arithmetic.verify import ArithmeticCheck, check_answer, final_number

__all__ = ["ArithmeticCheck", "ArithmeticProblem", "ArithmeticTask", "check_answer", "final_number"]
