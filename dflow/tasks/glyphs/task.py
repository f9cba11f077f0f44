"""``GlyphsTask``: OCR analogue, render a short string with a 3x5 bitmap font."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from dflow.tasks.base import (
    Prompt,
    Task,
    TaskBatch,
    check_positive_int,
    check_split,
    choose_prompts,
)
from dflow.tasks.glyphs.font import min_hamming_distance
from dflow.tasks.glyphs.reader import GlyphLayout, GlyphReader, similarity
from dflow.tasks.grid import PaletteImageTask

PALETTE = np.array([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]], dtype=np.float32)  # background, ink
MAX_LENGTH = 8  # keeps the sequences short; the index space per length is len(alphabet)**n
HELDOUT_FRACTION_CAP = 4  # at most 1/4 of the strings of a length are held out for the test split


class GlyphsTask(PaletteImageTask, Task):
    """Write the prompt's string in a fixed layout of 3x5 glyph cells (OCR analogue).

    Output tokens are the pixels of an ``H x W`` binary image in row-major order (0 = background,
    1 = ink, ``V = 2``), with ``H = 7`` and ``W = 4 * max_length + 1`` (1-pixel margin and spacing).
    The prompt is the string itself, one token per character (id = alphabet index + 1, 0 = pad).

    Reader: each cell is the alphabet glyph nearest in Hamming distance if at most
    ``max_read_distance`` pixels differ, blank (skipped) if it has no ink, else ``"?"``. With the
    read string ``r`` and the target ``s``:

        reward = 1 - levenshtein(r, s) / max(len(r), len(s), 1)       correct = (r == s)

    Categories are the string lengths (``"len2"`` ... ``"len4"``). Three disjoint splits of strings:
    ``pretrain`` (the base's data), ``rl`` (RL training strings) and ``test`` (held out, scored
    only). No test string is a pretraining or RL prompt; every character appears in all three, so
    a gain on the test strings is a better writer of unseen strings, not a memorised one. A
    length with too few strings for all three (``len2``: 144 strings) has no RL strings.

    Args:
        alphabet: characters used (a subset of A-Z). Its glyphs must differ pairwise in at least
            ``2 * max_read_distance + 1`` pixels so every read is unambiguous.
        min_length: shortest string.
        max_length: longest string (also the number of cells, ``Lc``); at most 8.
        pretrain_prompts_per_length: pretraining strings per length (fewer if a length has fewer).
        test_prompts_per_length: held-out test strings per length (at most a quarter of them).
        rl_prompts_per_length: RL strings per length, drawn from the strings left over by the
            other two splits (fewer if fewer are left).
        max_read_distance: pixel errors per cell the reader tolerates.
        seed: seeds the choice of strings.
        render_scale: pixels per image cell in ``render``.
    """

    palette = PALETTE  # [V, 3] RGB: rendering and the metric-path embedding
    name = "glyphs"

    def __init__(
        self,
        alphabet: str = "ABCEIJLMOSXZ",
        min_length: int = 2,
        max_length: int = 4,
        pretrain_prompts_per_length: int = 200,
        test_prompts_per_length: int = 50,
        rl_prompts_per_length: int = 200,
        max_read_distance: int = 1,
        seed: int = 0,
        render_scale: int = 8,
    ) -> None:
        if not isinstance(alphabet, str) or len(alphabet) < 2 or len(set(alphabet)) < len(alphabet):
            raise ValueError(f"alphabet must be a string of >= 2 distinct characters, got {alphabet!r}")
        check_positive_int(min_length, "min_length")
        check_positive_int(max_length, "max_length")
        if not min_length <= max_length <= MAX_LENGTH:
            raise ValueError(f"max_length must lie in [min_length={min_length}, {MAX_LENGTH}], got {max_length}")
        check_positive_int(pretrain_prompts_per_length, "pretrain_prompts_per_length")
        check_positive_int(test_prompts_per_length, "test_prompts_per_length")
        check_positive_int(rl_prompts_per_length, "rl_prompts_per_length")
        check_positive_int(max_read_distance, "max_read_distance", minimum=0)
        need = 2 * max_read_distance + 1
        if min_hamming_distance(alphabet) < need:
            raise ValueError(
                f"alphabet {alphabet!r} has glyphs only {min_hamming_distance(alphabet)} pixels "
                f"apart; max_read_distance={max_read_distance} needs {need}"
            )
        self.alphabet = alphabet
        self.min_length, self.max_length = min_length, max_length
        self.render_scale = check_positive_int(render_scale, "render_scale")
        self.reader = GlyphReader(alphabet, GlyphLayout(max_length), max_read_distance)
        self.height, self.width = self.reader.layout.height, self.reader.layout.width
        self.vocab_size = len(PALETTE)
        self.seq_len = self.height * self.width
        self.prompt_len = max_length
        self.prompt_vocab_size = len(alphabet) + 1
        self.categories = tuple(f"len{n}" for n in range(min_length, max_length + 1))
        self._char_ids = {ch: i + 1 for i, ch in enumerate(alphabet)}
        self._prompts = self._build_prompts(
            pretrain_prompts_per_length, test_prompts_per_length, rl_prompts_per_length, seed
        )

    def _build_prompts(self, n_pretrain: int, n_test: int, n_rl: int, seed: int) -> dict[str, tuple[Prompt, ...]]:
        """Per length, draw distinct strings (as base-A indices) once; the first ones are the test
        strings, the next ones the pretraining strings; the RL strings are drawn (with their own
        seed) from the indices left over, so the three sets are disjoint."""
        A = len(self.alphabet)
        splits: dict[str, list[Prompt]] = {"pretrain": [], "rl": [], "test": []}

        def prompt(index: int, n: int) -> Prompt:
            text = "".join(self.alphabet[(index // A**p) % A] for p in reversed(range(n)))
            return Prompt(text, f"len{n}", text)

        for n in range(self.min_length, self.max_length + 1):
            total = A**n
            k_test = min(n_test, total // HELDOUT_FRACTION_CAP)
            k_pretrain = min(n_pretrain, total - k_test)
            picks = np.random.default_rng([seed, n]).choice(total, size=k_test + k_pretrain, replace=False)
            for i, index in enumerate(picks.tolist()):
                splits["test" if i < k_test else "pretrain"].append(prompt(index, n))
            left = np.setdiff1d(np.arange(total), picks)  # sorted
            k_rl = min(n_rl, len(left))
            if k_rl:
                chosen = np.random.default_rng([seed, n, 2]).choice(len(left), size=k_rl, replace=False)
                splits["rl"] += [prompt(int(left[i]), n) for i in chosen.tolist()]
        return {k: tuple(v) for k, v in splits.items()}

    def prompts(self, split: str) -> list[Prompt]:
        return list(self._prompts[check_split(split)])

    def _target(self, p: Prompt) -> str:
        if not isinstance(p.spec, str) or not self.min_length <= len(p.spec) <= self.max_length:
            raise ValueError(
                f"prompt {p.text!r} has spec {p.spec!r}; expected a string of "
                f"{self.min_length}..{self.max_length} characters"
            )
        bad = [ch for ch in p.spec if ch not in self._char_ids]
        if bad:
            raise ValueError(f"prompt {p.text!r} has characters {bad} outside {self.alphabet!r}")
        return p.spec

    def encode_prompts(self, prompts: Sequence[Prompt]) -> Tensor:
        out = torch.zeros(len(prompts), self.prompt_len, dtype=torch.long)  # [B, Lc]
        for b, p in enumerate(prompts):
            target = self._target(p)
            out[b, : len(target)] = torch.tensor([self._char_ids[ch] for ch in target])
        return out

    def sample_data(self, n: int, generator: torch.Generator | None = None, split: str = "pretrain") -> TaskBatch:
        """Random prompts of ``split`` with their (deterministic) renders."""
        prompts = choose_prompts(self.prompts(split), n, generator)
        images = np.stack([self.reader.render(p.spec) for p in prompts])  # [B, H, W]
        x1 = torch.from_numpy(images).view(n, self.seq_len)  # [B, H*W]
        return TaskBatch(x1=x1, cond=self.encode_prompts(prompts), prompts=prompts)

    def read(self, x1: Tensor) -> list[str]:
        """The strings the reader sees in samples ``x1`` long ``[B, L]``."""
        x1 = self.check_x1(x1, None)
        return self.reader.read(x1.view(-1, self.height, self.width).numpy())

    def _reads_and_targets(self, x1: Tensor, prompts: Sequence[Prompt]) -> tuple[list[str], list[str]]:
        self.check_x1(x1, prompts)
        self.check_prompts(prompts)
        targets = [self._target(p) for p in prompts]
        return self.read(x1), targets

    def reward(self, x1: Tensor, prompts: Sequence[Prompt]) -> Tensor:
        reads, targets = self._reads_and_targets(x1, prompts)
        values = [similarity(r, s) for r, s in zip(reads, targets, strict=True)]
        return torch.tensor(values, dtype=torch.float32, device=x1.device)

    def correct(self, x1: Tensor, prompts: Sequence[Prompt]) -> Tensor:
        reads, targets = self._reads_and_targets(x1, prompts)
        values = [r == s for r, s in zip(reads, targets, strict=True)]
        return torch.tensor(values, dtype=torch.bool, device=x1.device)
