"""``ShapesTask``: GenEval analogue on small palette-indexed images."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from dflow.tasks.base import (
    Prompt,
    Task,
    TaskBatch,
    check_positive_int,
    check_split,
    choose_prompts,
    numpy_rng,
)
from dflow.tasks.grid import PaletteImageTask
from dflow.tasks.shapes.draw import render_spec
from dflow.tasks.shapes.prompts import (
    CATEGORIES,
    HELDOUT_COLOR_SHAPE,
    MAX_WORDS,
    WORDS,
    build_splits,
)
from dflow.tasks.shapes.spec import PALETTE, ShapesSpec
from dflow.tasks.shapes.verify import Score, score_batch

MIN_SIDE = 8  # four 3x3 objects with 1-pixel gaps need 7x7; one more pixel keeps placement easy


class ShapesTask(PaletteImageTask, Task):
    """Compose coloured shapes in a ``height x width`` image as the prompt asks (GenEval analogue).

    Output tokens are the pixels in row-major order; value 0 is the black background and values
    1..6 are red, green, blue, yellow, magenta, cyan (``V = 7``). Shapes are 3x3 ``square``,
    ``ring`` (hollow square), ``cross`` (plus) and ``bar`` (horizontal 1x3 line). Prompts are
    word-tokenised (ids ``1..len(WORDS)``, 0 = pad).

    Verifier: 4-connected components per colour, each classified by exact pixel pattern (else
    clutter). Per image with ``matched`` required objects present (per object spec
    ``min(count, #objects of the right shape and colour)``), ``required`` objects asked for,
    ``extra`` = every other component (surplus objects, wrong shapes/colours, clutter), and a
    relation term ``rel`` = 1 if some fitting pair satisfies the relation (only for ``position``
    prompts, which then count one extra unit in the denominator):

        reward = max(0, (matched + rel - extra_penalty * extra) / (required + has_relation))

    ``correct`` holds iff ``matched == required``, ``extra == 0`` and the relation holds,
    i.e. iff ``reward == 1``.

    Args:
        height: image rows (>= 8).
        width: image columns (>= 8).
        pretrain_prompts_per_category: cap on pretraining prompts per category (the large
            categories ``position`` and ``color_attr`` are subsampled to it; the others have fewer).
        test_prompts_per_category: the same cap for the test split.
        rl_prompts_per_category: the same cap for the RL split (None: every prompt left over by
            the other two splits).
        extra_penalty: reward lost per extra component, in units of one required object.
        pretrain_images_avoid_heldout: pretraining images never show a held-out colour-shape pair,
            even as an object whose colour the prompt leaves free (``"a cross"`` then never gets a
            red cross). False (the default since session 6): such objects take any colour, so the
            base has *seen* red crosses but was never *asked* for one; a held-out pair is then a
            new composition of words, as in GenEval, not a picture outside the base's support (RL
            can only reweight what the base can draw). The bases embedded before session 6 were
            trained with True.
        seed: seeds the subsampling of the prompt lists.
        render_scale: pixels per image cell in ``render``.
    """

    palette = PALETTE  # [V, 3] RGB: rendering and the metric-path embedding
    name = "shapes"

    def __init__(
        self,
        height: int = 12,
        width: int = 12,
        pretrain_prompts_per_category: int = 150,
        test_prompts_per_category: int = 60,
        rl_prompts_per_category: int | None = None,
        extra_penalty: float = 0.5,
        pretrain_images_avoid_heldout: bool = False,
        seed: int = 0,
        render_scale: int = 8,
    ) -> None:
        self.height = check_positive_int(height, "height", minimum=MIN_SIDE)
        self.width = check_positive_int(width, "width", minimum=MIN_SIDE)
        check_positive_int(pretrain_prompts_per_category, "pretrain_prompts_per_category")
        check_positive_int(test_prompts_per_category, "test_prompts_per_category")
        if rl_prompts_per_category is not None:
            check_positive_int(rl_prompts_per_category, "rl_prompts_per_category")
        if not 0.0 <= float(extra_penalty) <= 1.0:
            raise ValueError(f"extra_penalty must lie in [0, 1], got {extra_penalty!r}")
        self.extra_penalty = float(extra_penalty)
        self.pretrain_images_avoid_heldout = bool(pretrain_images_avoid_heldout)
        self.render_scale = check_positive_int(render_scale, "render_scale")
        self.vocab_size = len(PALETTE)
        self.seq_len = self.height * self.width
        self.prompt_len = MAX_WORDS
        self.prompt_vocab_size = len(WORDS) + 1
        self.categories = CATEGORIES
        self._word_ids = {w: i + 1 for i, w in enumerate(WORDS)}
        self._prompts = build_splits(
            pretrain_prompts_per_category, test_prompts_per_category, rl_prompts_per_category, seed
        )

    def prompts(self, split: str) -> list[Prompt]:
        return list(self._prompts[check_split(split)])

    def encode_prompts(self, prompts: Sequence[Prompt]) -> Tensor:
        out = torch.zeros(len(prompts), self.prompt_len, dtype=torch.long)  # [B, Lc]
        for b, p in enumerate(prompts):
            words = p.text.split()
            if len(words) > self.prompt_len:
                raise ValueError(f"prompt {p.text!r} has more than {self.prompt_len} words")
            for i, w in enumerate(words):
                if w not in self._word_ids:
                    raise ValueError(f"prompt {p.text!r} has word {w!r} outside the word list")
                out[b, i] = self._word_ids[w]
        return out

    def sample_data(self, n: int, generator: torch.Generator | None = None, split: str = "pretrain") -> TaskBatch:
        """Random prompts of ``split``, each with a random image that satisfies it exactly.

        With ``pretrain_images_avoid_heldout``, objects of the pretrain split whose colour the
        prompt leaves free avoid the held-out ``(color, shape)`` pairs, so those pairs never appear
        in pretraining images at all.
        """
        prompts = choose_prompts(self.prompts(split), n, generator)
        rng = numpy_rng(generator)
        avoid = split == "pretrain" and self.pretrain_images_avoid_heldout
        forbidden = HELDOUT_COLOR_SHAPE if avoid else frozenset()
        x1 = torch.zeros(n, self.seq_len, dtype=torch.long)  # [B, H*W]
        for b, p in enumerate(prompts):
            image = render_spec(p.spec, self.height, self.width, rng, forbidden)
            x1[b] = torch.from_numpy(image).flatten()
        return TaskBatch(x1=x1, cond=self.encode_prompts(prompts), prompts=prompts)

    def scores(self, x1: Tensor, prompts: Sequence[Prompt]) -> list[Score]:
        """The verifier's per-image breakdown (matched / required / extra / relation)."""
        x1 = self.check_x1(x1, prompts)
        self.check_prompts(prompts)
        for p in prompts:
            if not isinstance(p.spec, ShapesSpec):
                raise ValueError(f"prompt {p.text!r} has spec {p.spec!r}, expected a ShapesSpec")
        images = x1.view(-1, self.height, self.width)  # [B, H, W]
        return score_batch(images, [p.spec for p in prompts])

    def reward(self, x1: Tensor, prompts: Sequence[Prompt]) -> Tensor:
        values = [s.reward(self.extra_penalty) for s in self.scores(x1, prompts)]
        return torch.tensor(values, dtype=torch.float32, device=x1.device)

    def correct(self, x1: Tensor, prompts: Sequence[Prompt]) -> Tensor:
        values = [s.correct for s in self.scores(x1, prompts)]
        return torch.tensor(values, dtype=torch.bool, device=x1.device)
