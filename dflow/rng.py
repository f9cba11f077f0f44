"""Random generators that live on the device of the tensors they draw.

PyTorch refuses a CPU ``torch.Generator`` for CUDA draws (and the reverse), so every draw in dflow
names its device and takes a generator of that device:

- :func:`draw_device`: where a draw that only produces indices (a permutation, a window start)
  should happen, so that it works with a generator of any device;
- :class:`DeviceRNG`: a seeded generator for a module whose device is known only once Lightning
  has placed it; it is (re)built on the device asked for, and its state travels in checkpoints.
"""

from __future__ import annotations

import warnings

import torch


def draw_device(generator: torch.Generator | None, fallback: torch.device | str = "cpu") -> torch.device:
    """The device a draw with ``generator`` must happen on: the generator's own, else ``fallback``."""
    return generator.device if generator is not None else torch.device(fallback)


class DeviceRNG:
    """A seeded ``torch.Generator`` on whatever device it is asked for.

    ``on(device)`` returns the generator, creating it on ``device`` the first time (seeded with
    ``seed``, or set to a state restored by :meth:`load_state_dict`). Moving to another device
    mid-run cannot carry the stream over (CPU and CUDA generators have different states), so the
    new generator is seeded from ``(seed, moves)`` with a warning.
    """

    def __init__(self, seed: int) -> None:
        self.seed = int(seed)
        self._generator: torch.Generator | None = None
        self._pending: dict | None = None
        self._moves = 0

    def on(self, device: torch.device | str) -> torch.Generator:
        device = torch.device(device)
        gen = self._generator
        if gen is not None and gen.device == device:
            return gen
        new = torch.Generator(device=device)
        pending, self._pending = self._pending, None
        was = pending["device"] if pending is not None else gen.device.type if gen is not None else None
        if pending is not None and pending["device"] == device.type:
            new.set_state(pending["state"])
        elif was is not None:  # a stream existed (pending or live) on another device
            self._moves += 1
            warnings.warn(
                f"the RL generator moved from {was} to {device.type}: its stream cannot be carried over, "
                f"so it is reseeded (runs are reproducible, but not bit-identical to one on {was})",
                stacklevel=2,
            )
            new.manual_seed(self.seed * 1_000_003 + self._moves)
        else:
            new.manual_seed(self.seed)
        self._generator = new
        return new

    def state_dict(self) -> dict | None:
        """``{"device": type, "state": ByteTensor}``, or None before the first draw."""
        if self._generator is None:
            return self._pending
        return {"device": self._generator.device.type, "state": self._generator.get_state()}

    def load_state_dict(self, state: dict | torch.Tensor | None) -> None:
        if state is None:
            return
        if torch.is_tensor(state):  # checkpoints written before DeviceRNG: a CPU generator's state
            state = {"device": "cpu", "state": state}
        self._pending, self._generator = dict(state), None
