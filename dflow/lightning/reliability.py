"""Checkpoints that survive crashes, and runs that stop cleanly on SIGTERM / Ctrl-C.

- :class:`AtomicCheckpointIO` writes ``path.tmp-<pid>``, fsyncs it, then ``os.replace``s it over
  ``path``: a process killed mid-save leaves the previous checkpoint intact. Loading names the file
  and what is wrong with it (missing, truncated / not a checkpoint, not a Lightning checkpoint).
- :class:`GracefulShutdown` turns the first SIGTERM or SIGINT into "finish this step, save
  ``last.ckpt``, stop"; a second signal interrupts at once.
"""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

CHECKPOINT_PATH_KEY = "dflow_checkpoint_path"


class AtomicCheckpointIO(TorchCheckpointIO):
    """``torch.save`` to a temporary file in the same folder, fsync, then an atomic rename."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
        try:
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            if tmp.exists():
                tmp.unlink()

    def load_checkpoint(
        self, path, map_location: Any | None = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        return load_checkpoint_file(path, map_location)


def load_checkpoint_file(path, map_location: Any | None = "cpu") -> dict[str, Any]:
    """Load a dflow / Lightning checkpoint with a ValueError that names the file and the problem.

    dflow checkpoints hold typed config records (sampler settings, reward specs), so they are loaded
    with ``weights_only=False``: load only checkpoints you trust (your own runs).
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"checkpoint {str(path)!r} does not exist (or is not a file)")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as err:  # truncated zip, wrong format, ...
        raise ValueError(
            f"checkpoint {str(path)!r} is unreadable: truncated or not a torch checkpoint ({type(err).__name__}: {err})"
        ) from err
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        keys = sorted(ckpt)[:8] if isinstance(ckpt, dict) else type(ckpt).__name__
        raise ValueError(f"checkpoint {str(path)!r} is not a Lightning checkpoint (no 'state_dict'; found {keys})")
    ckpt[CHECKPOINT_PATH_KEY] = str(path)
    return ckpt


def check_state_dict(module: torch.nn.Module, checkpoint: dict[str, Any]) -> None:
    """ValueError naming the checkpoint file when its weights do not fit ``module`` (missing keys, shapes)."""
    where = checkpoint.get(CHECKPOINT_PATH_KEY, "<checkpoint>")
    if "state_dict" not in checkpoint:
        return  # ModelParallelStrategy (FSDP2) loads the sharded weights itself and passes the rest
    own = module.state_dict()
    theirs = checkpoint["state_dict"]
    missing = sorted(set(own) - set(theirs))
    unexpected = sorted(set(theirs) - set(own))
    shapes = [
        (k, tuple(theirs[k].shape), tuple(v.shape))
        for k, v in own.items()
        if k in theirs and hasattr(theirs[k], "shape") and tuple(theirs[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} tensors (e.g. {missing[:3]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected tensors (e.g. {unexpected[:3]})")
        if shapes:
            k, a, b = shapes[0]
            parts.append(f"{len(shapes)} shape mismatches (e.g. {k}: checkpoint {a} vs model {b})")
        raise ValueError(f"checkpoint {where!r} is incompatible with this configuration: " + "; ".join(parts))


class GracefulShutdown(L.Callback):
    """First SIGTERM / SIGINT: finish the current step, save ``last.ckpt`` where ``--ckpt_path last``
    looks for it, and stop. A second signal raises ``KeyboardInterrupt`` immediately."""

    def __init__(self, signals: tuple[str, ...] = ("SIGTERM", "SIGINT")) -> None:
        self.signals = signals
        self.requested: str | None = None
        self._previous: dict[int, Any] = {}

    def _handler(self, signum, frame) -> None:
        if self.requested is not None:
            self._restore()
            raise KeyboardInterrupt
        self.requested = signal.Signals(signum).name

    def _restore(self) -> None:
        for sig, prev in self._previous.items():
            signal.signal(sig, prev)
        self._previous.clear()

    def on_train_start(self, trainer, pl_module) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set from the main thread
        for name in self.signals:
            sig = getattr(signal, name)
            self._previous[sig] = signal.signal(sig, self._handler)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.requested is None:
            return
        path = last_checkpoint_path(trainer)
        trainer.save_checkpoint(path)
        trainer.should_stop = True
        if trainer.is_global_zero:
            print(f"\n{self.requested} received: saved {path}; resume with --ckpt_path last", flush=True)

    def on_train_end(self, trainer, pl_module) -> None:
        self._restore()

    def on_exception(self, trainer, pl_module, exception) -> None:
        self._restore()


def last_checkpoint_path(trainer: L.Trainer) -> Path:
    """``<checkpoint dir>/last.ckpt``: the file ``--ckpt_path last`` resumes from."""
    dirpath = getattr(trainer.checkpoint_callback, "dirpath", None)  # None without a checkpoint callback
    if dirpath:
        return Path(dirpath) / "last.ckpt"
    return Path(trainer.default_root_dir) / "checkpoints" / "last.ckpt"
