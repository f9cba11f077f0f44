"""``ReasoningTask``: what the text reasoning tasks (``countdown``, ``arithmetic``, ``sudoku``) share.

A subclass supplies the answer alphabet, the three prompt lists, ``judge(answer_text, spec)`` (the
exact verifier, on text) and ``reference_answer(spec, rng)`` (a ground truth, as text). This class
does the rest: decoding samples to text (:class:`~dflow.tasks.reasoning.answer.AnswerAlphabet`),
prompt ids through a tokenizer (:class:`~dflow.tasks.reasoning.prompting.PromptEncoder`),
``reward`` / ``correct`` / ``format_ok`` tensors from the verdicts, readable sample dumps and PNG
renders of the answers.

The verifier reads model output, so ``judge`` never raises on any text: whatever does not parse or
check scores 0 with a reason in ``Verdict.detail``.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

from dflow.tasks.base import Prompt, Task, TaskBatch, check_positive_int, check_split, choose_prompts, numpy_rng
from dflow.tasks.grid import LINE_HEIGHT, save_grid
from dflow.tasks.reasoning.answer import AnswerAlphabet
from dflow.tasks.reasoning.prompting import PromptEncoder


@dataclass(frozen=True)
class Verdict:
    """The verifier's judgement of one answer.

    Attributes:
        reward: partial-credit training reward in ``[0, 1]``; 1 exactly when ``correct``.
        correct: the strict criterion.
        format_ok: the answer is well formed (the task says what that means).
        detail: why, in words (``"3*7+25 = 46, the target"``, ``"uses 7 twice"``, ...).
    """

    reward: float
    correct: bool
    format_ok: bool
    detail: str


@dataclass(frozen=True)
class SampleRecord:
    """One sample of a dump: the prompt, the decoded answer and the verdict."""

    category: str
    prompt: str
    answer: str
    verdict: Verdict


TILE_WIDTH = 256  # render: pixels per tile; three lines of text (problem, answer, verdict)


class ReasoningTask(Task):
    """Base of the text reasoning tasks (see the module doc). Subclasses set ``name``,
    ``categories`` and ``alphabet``, and call :meth:`_init_text` at the end of ``__init__``."""

    alphabet: AnswerAlphabet
    tokenizer: Any
    data_token_ids: list[int]
    encoder: PromptEncoder
    _prompts: dict[str, tuple[Prompt, ...]]

    def _init_text(
        self,
        prompts: dict[str, tuple[Prompt, ...]],
        seq_len: int,
        tokenizer: str | None,
        chat_template: bool | None,
        prompt_len: int | None,
        words: Sequence[str] | None = None,
    ) -> None:
        """Set the prompt lists, tokenizer, ids and sizes; ``prompt_len=None`` takes the longest
        prompt of the three splits, so every prompt fits. ``words``: the in-code word tokenizer's
        words (when ``tokenizer`` is ``None``), or ``None`` for the character one."""
        self._prompts = prompts
        self.seq_len = check_positive_int(seq_len, "seq_len")
        self.encoder = PromptEncoder(tokenizer, chat_template, self.name, words=words)
        self.tokenizer = self.encoder.tokenizer
        where = "the in-code tokenizer" if tokenizer is None else f"the tokenizer in {tokenizer!r}"
        self.data_token_ids = self.alphabet.token_ids(self.tokenizer, where=f"task {self.name!r}: {where}")
        self.vocab_size = len(self.alphabet)
        self.prompt_vocab_size = len(self.tokenizer)
        every = [p.text for split in prompts.values() for p in split]
        longest = max(self.encoder.lengths(every))
        if prompt_len is None:
            self.prompt_len = longest
        else:
            check_positive_int(prompt_len, "prompt_len")
            if prompt_len < longest:
                raise ValueError(
                    f"task {self.name!r}: prompt_len={prompt_len} is shorter than its longest prompt ({longest} "
                    "tokens); raise it or leave it unset"
                )
            self.prompt_len = prompt_len

    # ---- what a subclass supplies ---------------------------------------------------------

    @abstractmethod
    def judge(self, answer: str, spec: Any) -> Verdict:
        """The verdict on ``answer`` (decoded text) for the problem ``spec``; never raises."""

    @abstractmethod
    def reference_answer(self, spec: Any, rng: np.random.Generator) -> str:
        """A correct answer to ``spec`` as text (random among several when there are several)."""

    @abstractmethod
    def summary(self, spec: Any) -> str:
        """A one-line description of the problem for renders and dumps."""

    # ---- the Task interface ---------------------------------------------------------------

    def prompts(self, split: str) -> list[Prompt]:
        return list(self._prompts[check_split(split)])

    def encode_prompts(self, prompts: Sequence[Prompt]) -> Tensor:
        return self.encoder.encode([p.text for p in prompts], self.prompt_len)

    def ground_truth(self, prompts: Sequence[Prompt], generator: torch.Generator | None = None) -> Tensor:
        """Long ``[B, L]``: a reference answer of each prompt, as data values."""
        self.check_prompts(prompts)
        rng = numpy_rng(generator)
        rows = [self.alphabet.encode(self.reference_answer(p.spec, rng), self.seq_len) for p in prompts]
        return torch.tensor(rows, dtype=torch.long).view(len(prompts), self.seq_len)

    def sample_data(self, n: int, generator: torch.Generator | None = None, split: str = "pretrain") -> TaskBatch:
        prompts = choose_prompts(self.prompts(split), n, generator)
        return TaskBatch(x1=self.ground_truth(prompts, generator), cond=self.encode_prompts(prompts), prompts=prompts)

    def answers(self, x1: Tensor) -> list[str]:
        """The decoded answer text of each sample (stops at the first ``[EOS]``)."""
        return self.alphabet.decode(self.check_x1(x1, None).numpy())

    def verdicts(self, x1: Tensor, prompts: Sequence[Prompt]) -> list[Verdict]:
        """The verifier's verdict on each sample."""
        values = self.check_x1(x1, prompts)
        self.check_prompts(prompts)
        texts = self.alphabet.decode(values.numpy())
        return [self.judge(text, p.spec) for text, p in zip(texts, prompts, strict=True)]

    def reward(self, x1: Tensor, prompts: Sequence[Prompt]) -> Tensor:
        return torch.tensor([v.reward for v in self.verdicts(x1, prompts)], dtype=torch.float32, device=x1.device)

    def correct(self, x1: Tensor, prompts: Sequence[Prompt]) -> Tensor:
        return torch.tensor([v.correct for v in self.verdicts(x1, prompts)], dtype=torch.bool, device=x1.device)

    def format_ok(self, x1: Tensor, prompts: Sequence[Prompt]) -> Tensor:
        """Bool ``[B]``: the answer is well formed (whether or not it is right)."""
        return torch.tensor([v.format_ok for v in self.verdicts(x1, prompts)], dtype=torch.bool, device=x1.device)

    # ---- reading samples ------------------------------------------------------------------

    def records(self, x1: Tensor, prompts: Sequence[Prompt]) -> list[SampleRecord]:
        """Prompt, decoded answer and verdict of each sample."""
        verdicts = self.verdicts(x1, prompts)
        texts = self.answers(x1)
        return [SampleRecord(p.category, p.text, a, v) for p, a, v in zip(prompts, texts, verdicts, strict=True)]

    def dump_samples(
        self, x1: Tensor, prompts: Sequence[Prompt], path: str | Path | None = None, prompt_chars: int = 400
    ) -> str:
        """A readable text dump, one block per sample: category, verdict and reward, the prompt (its
        last ``prompt_chars`` characters: the instance sits at the end), the answer and why. Written
        to ``path`` when given; returned either way."""
        blocks = []
        for i, r in enumerate(self.records(x1, prompts)):
            prompt = r.prompt if len(r.prompt) <= prompt_chars else "..." + r.prompt[-prompt_chars:]
            mark = "correct" if r.verdict.correct else "wrong"
            blocks.append(
                f"[{i}] {r.category} | {mark} | reward {r.verdict.reward:.3f} | format "
                f"{'ok' if r.verdict.format_ok else 'bad'}\n"
                f"prompt:  {_indent(prompt)}\nanswer:  {r.answer!r}\nverdict: {r.verdict.detail}\n"
            )
        text = "\n".join(blocks)
        if path is not None:
            path = Path(path)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
        return text

    def render(self, x1: Tensor, prompts: Sequence[Prompt] | None, path: str | Path, ncol: int = 8) -> Path:
        """Text tiles of ``TILE_WIDTH`` x 3 lines: the problem, the answer, the verdict (green when
        correct, red when not); without prompts only the answers. Captions are the categories."""
        texts = self.answers(x1)
        if prompts is None:
            tiles = [_text_tile(["", a, ""], (0, 0, 0)) for a in texts]
            return save_grid(tiles, path, None, ncol)
        verdicts = self.verdicts(x1, prompts)
        tiles = [
            _text_tile([self.summary(p.spec), a, v.detail], (0, 128, 0) if v.correct else (200, 0, 0))
            for p, a, v in zip(prompts, texts, verdicts, strict=True)
        ]
        return save_grid(tiles, path, [p.category for p in prompts], ncol, caption_lines=1)


def _indent(text: str) -> str:
    return text.replace("\n", "\n         ")


def _text_tile(lines: list[str], verdict_rgb: tuple[int, int, int]) -> Image.Image:
    tile = Image.new("RGB", (TILE_WIDTH, 3 * LINE_HEIGHT + 4), (255, 255, 255))
    draw = ImageDraw.Draw(tile)
    font = ImageFont.load_default()
    colours = [(0, 0, 0), (0, 0, 160), verdict_rgb]
    for i, (line, rgb) in enumerate(zip(lines, colours, strict=True)):
        # one line each, clipped at the tile's edge; characters pillow's default font lacks show as boxes
        draw.text((2, 2 + i * LINE_HEIGHT), line.replace("\n", " "), fill=rgb, font=font)
    return tile
