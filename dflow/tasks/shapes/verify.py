"""Verifier of the shapes task: connected components -> shape classes -> prompt check.

1. ``find_objects`` labels the 4-connected components of equal non-background colour in every
   image (vectorised label propagation; no scipy) and classifies each by its pixel pattern:
   a component is a shape iff its pixels, cropped to their bounding box, equal that shape's
   template exactly; anything else is clutter.
2. ``score`` compares the objects of one image with a ``ShapesSpec`` (formula in its docstring).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from dflow.tasks.shapes.spec import COLORS, SHAPES, SLOT, TEMPLATES, ShapesSpec, relation_holds

CLUTTER = -1


@dataclass
class DetectedObjects:
    """Connected components found in a batch of images, ``N`` in total.

    Attributes:
        batch: long ``[N]``, the image each component belongs to.
        color: long ``[N]``, its palette value (``>= 1``).
        shape: long ``[N]``, index into ``SHAPES``, or ``CLUTTER`` (-1) when no template matches.
        center: float ``[N, 2]``, ``(row, col)`` centre of its bounding box.
    """

    batch: Tensor
    color: Tensor
    shape: Tensor
    center: Tensor


def label_components(images: Tensor) -> Tensor:
    """Label 4-connected components of equal non-zero value.

    Args:
        images: long ``[B, H, W]``.

    Returns:
        long ``[B, H, W]``: every pixel gets the smallest flat index ``b * H * W + h * W + w`` of
        the pixels in its component (background pixels are their own singleton components).
    """
    B, H, W = images.shape
    n = B * H * W
    own = torch.arange(n).view(B, H, W)
    fg = images != 0
    link_w = fg[:, :, :-1] & (images[:, :, :-1] == images[:, :, 1:])  # [B, H, W-1] (h,w)~(h,w+1)
    link_h = fg[:, :-1, :] & (images[:, :-1, :] == images[:, 1:, :])  # [B, H-1, W] (h,w)~(h+1,w)
    labels = own.clone()
    while True:
        new = labels.clone()
        for link, dim in ((link_w, 2), (link_h, 1)):
            first = tuple(slice(None, -1) if d == dim else slice(None) for d in range(3))
            second = tuple(slice(1, None) if d == dim else slice(None) for d in range(3))
            low = torch.minimum(labels[first], labels[second])  # both pixels of a linked pair
            new[first] = torch.where(link, torch.minimum(new[first], low), new[first])
            new[second] = torch.where(link, torch.minimum(new[second], low), new[second])
        # pointer jumping: a label is a pixel of the same component, so its label is valid too
        new = new.flatten()[new.flatten()].view(B, H, W)
        if torch.equal(new, labels):
            return labels
        labels = new


def find_objects(images: Tensor) -> DetectedObjects:
    """Detect and classify the objects of a batch of palette images, long ``[B, H, W]``."""
    B, H, W = images.shape
    labels = label_components(images).flatten()  # [B*H*W]
    fg = (images != 0).flatten()
    n = B * H * W
    lab = labels[fg]  # [P] component id of each ink pixel
    pix = torch.arange(n)[fg]
    rows = (pix // W) % H
    cols = pix % W
    ones = torch.ones_like(lab)
    count = torch.zeros(n, dtype=torch.long).index_add_(0, lab, ones)
    big = torch.full((n,), H + W, dtype=torch.long)
    rmin = big.clone().scatter_reduce_(0, lab, rows, "amin")
    cmin = big.clone().scatter_reduce_(0, lab, cols, "amin")
    rmax = torch.full((n,), -1, dtype=torch.long).scatter_reduce_(0, lab, rows, "amax")
    cmax = torch.full((n,), -1, dtype=torch.long).scatter_reduce_(0, lab, cols, "amax")
    # [N] one pixel per component: the one whose index is the component's label
    roots = torch.nonzero(fg & (labels == torch.arange(n))).squeeze(1)
    # each template's own bounding box inside its 3x3 slot: offset (t_r0, t_c0), size (t_h, t_w)
    t_rows = torch.from_numpy(TEMPLATES.any(axis=2))  # [S, 3] rows with ink
    t_cols = torch.from_numpy(TEMPLATES.any(axis=1))  # [S, 3] columns with ink
    t_r0, t_c0 = t_rows.long().argmax(1), t_cols.long().argmax(1)  # [S]
    t_h, t_w = t_rows.sum(1), t_cols.sum(1)  # [S]
    t_size = torch.from_numpy(TEMPLATES.reshape(len(SHAPES), -1).sum(1))  # [S]
    hits = _aligned_hits(rows, cols, rmin, cmin, lab, n, t_r0, t_c0)  # [n, S]
    c = count[roots][:, None]
    h = (rmax - rmin + 1)[roots][:, None]
    w = (cmax - cmin + 1)[roots][:, None]
    match = (c == t_size) & (hits[roots] == c) & (h == t_h) & (w == t_w)  # [N, S]
    shape = torch.where(match.any(1), match.long().argmax(1), torch.full_like(roots, CLUTTER))
    center = torch.stack([(rmin[roots] + rmax[roots]).float() / 2, (cmin[roots] + cmax[roots]).float() / 2], dim=1)
    return DetectedObjects(batch=roots // (H * W), color=images.flatten()[roots], shape=shape, center=center)


def _aligned_hits(
    rows: Tensor,
    cols: Tensor,
    rmin: Tensor,
    cmin: Tensor,
    lab: Tensor,
    n: int,
    t_r0: Tensor,
    t_c0: Tensor,
) -> Tensor:
    """Per component and template: how many of its pixels lie on the template's ink, with the
    template's own bounding box aligned to the component's. Returns long ``[n, S]``."""
    S = len(SHAPES)
    dr = (rows - rmin[lab])[:, None] + t_r0[None, :]  # [P, S] row inside the template's slot
    dc = (cols - cmin[lab])[:, None] + t_c0[None, :]
    inside = (dr < SLOT) & (dc < SLOT)
    tmpl = torch.from_numpy(TEMPLATES)  # [S, 3, 3]
    s_idx = torch.arange(S)[None, :].expand_as(dr)
    on = tmpl[s_idx, dr.clamp(max=SLOT - 1), dc.clamp(max=SLOT - 1)] & inside  # [P, S]
    return torch.zeros(n, S, dtype=torch.long).index_add_(0, lab, on.long())


@dataclass
class Score:
    """How well one image fits its spec.

    Attributes:
        matched: required objects present (per object spec, ``min(count, #fitting objects)``).
        required: objects the spec asks for.
        extra: detected components (objects or clutter) not used for a match.
        relation_ok: whether some fitting pair satisfies the relation (``True`` without one).
        has_relation: whether the spec has a relation.
    """

    matched: int
    required: int
    extra: int
    relation_ok: bool
    has_relation: bool

    def reward(self, extra_penalty: float) -> float:
        """``max(0, (matched + [relation_ok] - extra_penalty * extra)
        / (required + [has_relation]))`` with ``[.]`` = 1 if true else 0."""
        gain = self.matched + (1 if self.has_relation and self.relation_ok else 0)
        denom = self.required + (1 if self.has_relation else 0)
        return max(0.0, (gain - extra_penalty * self.extra) / denom)

    @property
    def correct(self) -> bool:
        """Exactly the requested objects, nothing else, relation satisfied."""
        return self.matched == self.required and self.extra == 0 and self.relation_ok


def score(objects: list[tuple[str, str, tuple[float, float]]], spec: ShapesSpec) -> Score:
    """Score one image's objects ``(color, shape or "clutter", (row, col))`` against ``spec``."""
    fitting = [[k for k, (color, shape, _) in enumerate(objects) if o.matches(color, shape)] for o in spec.objects]
    matched = sum(min(o.count, len(f)) for o, f in zip(spec.objects, fitting, strict=True))
    relation_ok = True
    if spec.relation is not None:
        relation_ok = any(
            relation_holds(spec.relation, objects[a][2], objects[b][2]) for a in fitting[0] for b in fitting[1]
        )
    return Score(
        matched=matched,
        required=spec.num_objects,
        extra=len(objects) - matched,
        relation_ok=relation_ok,
        has_relation=spec.relation is not None,
    )


def score_batch(images: Tensor, specs: list[ShapesSpec]) -> list[Score]:
    """Score every image, long ``[B, H, W]``, against its spec."""
    found = find_objects(images)
    per_image: list[list[tuple[str, str, tuple[float, float]]]] = [[] for _ in specs]
    for b, c, s, (r, col) in zip(
        found.batch.tolist(), found.color.tolist(), found.shape.tolist(), found.center.tolist(), strict=True
    ):
        per_image[b].append((COLORS[c - 1], SHAPES[s] if s != CLUTTER else "clutter", (r, col)))
    return [score(objs, spec) for objs, spec in zip(per_image, specs, strict=True)]
