"""A run owns its folder: checkpoints are written inside the run's log version, ``--ckpt_path last``
resolves to the newest checkpoint *of the same configuration*, and a checkpoint of another
configuration is refused.

A run's identity is what it trains: the ``model`` and ``data`` sections of its resolved config and
``seed_everything``. The trainer section is not part of it, so a resume may raise ``max_steps``.
:class:`RunIdentity` stores the identity in every checkpoint and compares it when one is loaded.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

IDENTITY_KEYS = ("model", "data", "seed_everything")
CHECKPOINT_KEY = "dflow_run"
# settings that change what is evaluated or reported, not what is trained: a resume may change them
NOT_TRAINING = (
    "evaluation",  # RLModule's evaluation block (EvalConfig)
    # PretrainModule's evaluation settings, and RLModule's flat names before the blocks (older checkpoints)
    "eval_every_n_steps",
    "num_eval_prompts",
    "eval_samples_per_prompt",
    "eval_samples_per_category",
    "eval_batch_size",
    "num_grid_prompts",
    "watch",
    "compile_denoiser",
    "gradient_checkpointing",  # the same gradients, less memory: a resume on a smaller device may switch it on
    "eval_prompts",
    "eval_batch_size",
    "val_prompts",
    "val_batch_size",
)


def run_identity(config: dict[str, Any]) -> dict[str, Any]:
    """The part of a resolved config (a plain dict) that says what a run trains, as plain JSON data."""
    return json.loads(json.dumps({k: config.get(k) for k in IDENTITY_KEYS}, sort_keys=True, default=str))


def identity_sha(identity: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def differences(a: Any, b: Any, prefix: str = "") -> list[str]:
    """Dotted keys where two identities differ in what is trained, with both values
    (``model.init_args.optim.lr: 0.001 != 0.002``).

    Only keys both have are compared (an argument added to a class after a checkpoint was written
    must not make it unresumable), and evaluation / reporting settings (:data:`NOT_TRAINING`) are
    skipped (a resume may evaluate more often)."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for key in sorted(set(a) & set(b)):
            if key in NOT_TRAINING:
                continue
            out += differences(a[key], b[key], f"{prefix}{key}.")
        return out
    return [] if a == b else [f"{prefix.rstrip('.')}: {a!r} != {b!r}"]


def same_run(stored: dict[str, Any] | None, identity: dict[str, Any]) -> bool:
    """Whether a checkpoint's identity trains what ``identity`` trains (an unrecorded one counts as the same)."""
    return stored is None or not differences(stored, identity)


def read_identity(path: Path) -> dict[str, Any] | None:
    """The identity stored in a checkpoint file, or None (a checkpoint written before identities)."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    record = checkpoint.get(CHECKPOINT_KEY) if isinstance(checkpoint, dict) else None
    return record.get("identity") if isinstance(record, dict) else None


def _version_number(folder: Path) -> int | None:
    match = re.fullmatch(r"version_(\d+)", folder.name)
    return int(match.group(1)) if match else None


def check_last(path: Path, identity: dict[str, Any]) -> None:
    """Refuse a ``last.ckpt`` (found where a recipe's ModelCheckpoint writes) of another configuration."""
    stored = read_identity(path)
    if not same_run(stored, identity):
        diff = "; ".join(differences(stored, identity)[:6])
        raise ValueError(
            f"--ckpt_path last: {path} belongs to another configuration ({diff}); resume it with its own recipe "
            "and overrides, or give this run its own ModelCheckpoint dirpath"
        )


def find_last(run_root: Path, identity: dict[str, Any]) -> tuple[int, Path] | None:
    """The newest ``run_root/version_N/checkpoints/last.ckpt`` whose run has ``identity``.

    Returns ``(N, path)``, or None when ``run_root`` holds no ``last.ckpt`` at all. Raises a
    ``ValueError`` naming the differences when it holds some, but none of this configuration: a
    resume must never continue another configuration's weights.
    """
    found = []
    for folder in run_root.glob("version_*"):
        number, last = _version_number(folder), folder / "checkpoints" / "last.ckpt"
        if number is not None and last.is_file():
            found.append((number, last))
    if not found:
        return None
    mismatches = []
    for number, last in sorted(found, reverse=True):
        stored = read_identity(last)
        if stored is not None and same_run(stored, identity):
            return number, last
        mismatches.append((last, stored))
    newest, stored = mismatches[0]
    what = (
        "it records no configuration (written before dflow recorded one)"
        if stored is None
        else "; ".join(differences(stored, identity)[:6])
    )
    raise ValueError(
        f"--ckpt_path last: {run_root} holds checkpoints of other configurations only; the newest, {newest}, "
        f"differs: {what}. Resume it with its own recipe and overrides, pass --ckpt_path FILE explicitly "
        "(it is refused if its configuration differs), or start afresh under another "
        "trainer.logger.init_args.name"
    )


class RunIdentity(Callback):
    """Writes the run's identity into every checkpoint; refuses to load a checkpoint of another one.

    Added by ``dflow fit`` (``DFlowCLI``); a checkpoint without an identity (written before it
    existed, or by plain Lightning) is accepted.
    """

    def __init__(self, identity: dict[str, Any]) -> None:
        self.identity = identity

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        checkpoint[CHECKPOINT_KEY] = {"identity": self.identity, "sha256": identity_sha(self.identity)}

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        record = checkpoint.get(CHECKPOINT_KEY)
        stored = record.get("identity") if isinstance(record, dict) else None
        if same_run(stored, self.identity):
            return
        diff = "; ".join(differences(stored, self.identity)[:6])
        raise ValueError(
            f"the checkpoint being resumed belongs to another configuration ({diff}): resume it with its own "
            "recipe and overrides, or start a new run without --ckpt_path"
        )
