"""The testbed's base model: a tiny ``DFlowTransformer``, seeded, optionally pretrained in seconds.

Everything comes from code and a seed (no embedded weights): the same arguments give the same base
on the same machine. A recipe names the builder as its denoiser::

    denoiser:
      class_path: dflow.testbed.TestbedBase
      init_args: {seed: 0, pretrain_steps: 200}
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from dflow.lightning.builders import DenoiserBuilder, TransformerDenoiser
from dflow.lightning.losses import CrossEntropyLoss
from dflow.models import DFlowTransformer
from dflow.paths.base import ProbabilityPath
from dflow.tasks.base import Task


@dataclass
class PretrainLog:
    """What :func:`pretrain` did: ``losses[i]`` is the cross-entropy of step ``i``."""

    losses: list[float]


def pretrain(
    model: nn.Module,
    task: Task,
    path: ProbabilityPath,
    *,
    steps: int,
    batch_size: int = 128,
    lr: float = 3e-3,
    cond_dropout: float = 0.1,
    seed: int = 0,
) -> PretrainLog:
    """Discrete-flow pretraining of ``model`` on ``task.sample_data(split="pretrain")``, as
    :class:`~dflow.lightning.PretrainModule` does it without Lightning: ``t ~ U[0, 1)``,
    ``x_t ~ path.sample_xt(x1, t)``, the prompt dropped to the null prompt with probability
    ``cond_dropout`` (so guidance has an unconditional posterior), masked-token cross-entropy, AdamW
    with the learning rate decayed linearly to 0. All draws come from one generator seeded by ``seed``.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"pretrain: steps must be an int >= 0, got steps={steps!r}")
    gen = torch.Generator().manual_seed(seed)
    loss_fn = CrossEntropyLoss()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.99))
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 1.0 - i / max(steps, 1))
    model.train()
    losses = []
    for _ in range(steps):
        batch = task.sample_data(batch_size, gen, "pretrain")
        t = torch.rand(batch_size, generator=gen)  # [B]
        x_t = path.sample_xt(batch.x1, t, gen)  # [B, L]
        drop = torch.rand(batch_size, 1, generator=gen) < cond_dropout  # [B, 1]
        cond = batch.cond.masked_fill(drop, 0)  # [B, Lc], 0 = the null prompt
        loss = loss_fn(model(x_t, t, cond), batch.x1, x_t, t, path)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        schedule.step()
        losses.append(loss.item())
    model.eval()
    return PretrainLog(losses)


class TestbedBase(DenoiserBuilder):
    """A tiny ``DFlowTransformer`` sized from the task and path, initialised from ``seed``, then pretrained
    for ``pretrain_steps`` on the task's pretraining data (0: random initialisation, a near-uniform base).

    Args:
        hidden_size / num_layers / num_heads / mlp_ratio / time_conditioning / initializer_range: the
            transformer (defaults: 17.8k parameters on the default task).
        seed: seeds the initial weights and the pretraining draws.
        pretrain_steps: AdamW steps of :func:`pretrain` (200 reach the data's per-position statistics
            on the default task; about 9 s on one shared CPU core).
        batch_size / lr / cond_dropout: of :func:`pretrain`.
    """

    def __init__(
        self,
        hidden_size: int = 32,
        num_layers: int = 2,
        num_heads: int = 2,
        mlp_ratio: float = 2.0,
        time_conditioning: bool = False,
        initializer_range: float = 0.02,
        seed: int = 0,
        pretrain_steps: int = 200,
        batch_size: int = 128,
        lr: float = 3e-3,
        cond_dropout: float = 0.1,
    ) -> None:
        self.network = TransformerDenoiser(
            hidden_size=hidden_size,
            num_layers=num_layers,
            num_heads=num_heads,
            mlp_ratio=mlp_ratio,
            time_conditioning=time_conditioning,
            initializer_range=initializer_range,
        )
        if isinstance(pretrain_steps, bool) or not isinstance(pretrain_steps, int) or pretrain_steps < 0:
            raise ValueError(f"TestbedBase: pretrain_steps must be an int >= 0, got pretrain_steps={pretrain_steps!r}")
        self.seed, self.pretrain_steps = seed, pretrain_steps
        self.batch_size, self.lr, self.cond_dropout = batch_size, lr, cond_dropout
        self.log: PretrainLog | None = None

    def build(self, task: Task, path: ProbabilityPath) -> nn.Module:
        config = self.network.config(task, path)  # checks the task against the path
        with torch.random.fork_rng(devices=[]):  # seeded weights without touching the global RNG
            torch.manual_seed(self.seed)
            model = DFlowTransformer(config)
        self.log = pretrain(
            model,
            task,
            path,
            steps=self.pretrain_steps,
            batch_size=self.batch_size,
            lr=self.lr,
            cond_dropout=self.cond_dropout,
            seed=self.seed,
        )
        return model.eval()
