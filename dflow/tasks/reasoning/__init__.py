"""Shared machinery of the text reasoning tasks (``countdown``, ``arithmetic``, ``sudoku``): answer
alphabets, the in-code character tokenizer, prompt encoding through any local tokenizer and its chat
template, and the ``ReasoningTask`` base with verdicts, sample dumps and text renders."""

from dflow.tasks.reasoning.answer import AnswerAlphabet
from dflow.tasks.reasoning.prompting import PromptEncoder
from dflow.tasks.reasoning.task import ReasoningTask, SampleRecord, Verdict
from dflow.tasks.reasoning.tokenizer import build_char_tokenizer, load_tokenizer

__all__ = [
    "AnswerAlphabet",
    "PromptEncoder",
    "ReasoningTask",
    "SampleRecord",
    "Verdict",
    "build_char_tokenizer",
    "load_tokenizer",
]
