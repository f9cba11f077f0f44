"""``PretrainModule``: discrete-flow pretraining of a denoiser on a task's data, for any path.

One training step, per batch of clean data ``x1 [B, L]`` with prompts ``cond [B, Lc]``::

    t    ~ t_min + (t_max - t_min) u^(1/t_skew), u ~ U[0, 1)   # [B]; t_skew = 1: uniform
    x_t  ~ q(. | x1) = path.sample_xt(x1, t)  # [B, L]
    cond[row] = 0 with probability cond_dropout (the null prompt: classifier-free guidance)
    loss = loss_fn(denoiser(x_t, t, cond), x1, x_t, t, path)

Validation samples with the evaluation sampler for the data module's validation prompts, logs
``val/reward`` and ``val/acc_<category>`` / ``val/acc_overall`` from ``task.metric()``, and writes a
PNG grid to ``<log_dir>/samples/step_XXXXXX.png``. :meth:`PretrainModule.export_pretrained` writes
the base that :class:`~dflow.lightning.builders.PretrainedDenoiser` loads.

Randomness of a step (times, noise, dropout) comes from a generator seeded by ``(seed, batch
number, rank)``, so a resumed run draws exactly what an uninterrupted one would.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch
import torchmetrics
from lightning.pytorch.utilities.types import OptimizerLRSchedulerConfig
from torch import Tensor, nn

from dflow.lightning.builders import DenoiserBuilder, check_task_path
from dflow.lightning.export import model_meta, task_description, write_model_folder
from dflow.lightning.loggers import log_image
from dflow.lightning.losses import CrossEntropyLoss, PretrainLoss
from dflow.lightning.schedules import check_schedule, warmup_cosine, with_schedule
from dflow.lightning.streams import derive_seed
from dflow.logprobs import scoring_logits
from dflow.paths import ProbabilityPath
from dflow.sampling import SamplerConfig
from dflow.tasks import Task


class PretrainModule(L.LightningModule):
    """Pretrain a denoiser on ``trainer.datamodule.task`` along ``path``.

    Args:
        denoiser: a builder (``TransformerDenoiser``, ``PretrainedDenoiser``, ``HFMaskedLM``) that
            makes the network from the task and the path in ``setup``.
        path: the probability path (its source's ``vocab_size`` must equal the task's).
        loss: ``CrossEntropyLoss()`` (default) or ``GeneralizedKLLoss()``.
        cond_dropout: probability that a row's prompt is replaced by the null (all-zero) prompt, so
            one network also gives the unconditional posterior that guidance needs.
        lr: peak AdamW learning rate.
        weight_decay: AdamW weight decay (applied to matrices only, not to biases and norms).
        betas: AdamW betas.
        warmup_steps: linear warm-up from 0 to ``lr``; then cosine decay to ``min_lr_ratio * lr``
            at the last step (``trainer.max_steps``).
        min_lr_ratio: final learning rate as a fraction of ``lr``.
        t_min: lower end of the training-time distribution.
        t_max: upper end (< 1 keeps the generalized-KL weight ``1 / (1 - kappa)`` finite).
        t_skew: ``t = t_min + (t_max - t_min) u ** (1 / t_skew)``, ``u ~ U[0, 1)``: density
            ``~ t ** (t_skew - 1)``. 1 is uniform; 2 rises linearly towards the data end, where the
            nearly clean states that decide the last sampling steps are (few noisy tokens per
            sample there, so uniform time gives them little gradient).
        eval_sampler: sampler settings for validation; default 20 uniform steps with guidance 2.
        eval_samples_per_prompt: samples drawn per validation prompt.
        grid_samples: samples shown in each validation PNG.
        seed: seeds the per-step noise and the validation samples.
    """

    def __init__(
        self,
        denoiser: DenoiserBuilder,
        path: ProbabilityPath,
        loss: PretrainLoss | None = None,
        cond_dropout: float = 0.1,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.99),  # 0.99: small models on short runs, as nanoGPT
        warmup_steps: int = 100,
        min_lr_ratio: float = 0.1,
        t_min: float = 0.0,
        t_max: float = 1.0,
        t_skew: float = 1.0,
        eval_sampler: SamplerConfig | None = None,
        eval_samples_per_prompt: int = 1,
        grid_samples: int = 32,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if not isinstance(denoiser, DenoiserBuilder):
            raise ValueError(
                f"denoiser must be a DenoiserBuilder (e.g. TransformerDenoiser), got denoiser={denoiser!r}"
            )
        if not isinstance(path, ProbabilityPath):
            raise ValueError(f"path must be a dflow ProbabilityPath, got path={path!r}")
        if not 0.0 <= cond_dropout <= 1.0:
            raise ValueError(f"cond_dropout must be in [0, 1], got cond_dropout={cond_dropout!r}")
        if not (0.0 <= t_min < t_max <= 1.0):
            raise ValueError(f"need 0 <= t_min < t_max <= 1, got t_min={t_min!r}, t_max={t_max!r}")
        if not t_skew > 0:
            raise ValueError(f"t_skew must be > 0, got t_skew={t_skew!r}")
        if not lr > 0:
            raise ValueError(f"lr must be > 0, got lr={lr!r}")
        check_schedule(warmup_steps, min_lr_ratio)
        for name, value in (("eval_samples_per_prompt", eval_samples_per_prompt), ("grid_samples", grid_samples)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an int >= 0, got {name}={value!r}")
        self.save_hyperparameters(ignore=["denoiser", "path", "loss", "eval_sampler"])
        self.builder = denoiser
        self.path = path
        self.loss_fn = loss if loss is not None else CrossEntropyLoss()
        self.cond_dropout = float(cond_dropout)
        beta1, beta2 = betas
        self.lr, self.weight_decay, self.betas = lr, weight_decay, (beta1, beta2)
        self.warmup_steps, self.min_lr_ratio = warmup_steps, min_lr_ratio
        self.t_min, self.t_max, self.t_skew = float(t_min), float(t_max), float(t_skew)
        self.eval_config = eval_sampler if eval_sampler is not None else SamplerConfig(num_steps=20, guidance_scale=2.0)
        self.eval_sampler = self.eval_config.build(path)
        self.eval_samples_per_prompt = eval_samples_per_prompt
        self.grid_samples = grid_samples
        self.seed = seed
        self.task: Task | None = None
        self.denoiser: nn.Module | None = None
        self.val_metric: torchmetrics.Metric | None = None
        self._grid: list[tuple[Tensor, list[Any]]] = []
        self._batches_seen = 0  # noise counter when there is no trainer

    # ------------------------------------------------------------------ set-up
    def bind(self, task: Task) -> None:
        """Check the path against ``task`` and build the denoiser (``setup`` calls this)."""
        if not isinstance(task, Task):
            raise ValueError(f"task must be a dflow Task, got task={task!r}")
        check_task_path(task, self.path)
        self.task = task
        if self.denoiser is None:
            self.denoiser = self.builder.build(task, self.path)
        self.val_metric = task.metric()

    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        task = getattr(datamodule, "task", None)
        if task is None:
            raise ValueError(
                f"PretrainModule needs a data module with a .task (e.g. TaskDataModule), got datamodule={datamodule!r}"
            )
        self.bind(task)

    def _bound(self) -> tuple[nn.Module, Task, torchmetrics.Metric]:
        """The denoiser, task and validation metric that ``bind`` set (``RuntimeError`` before it)."""
        if self.denoiser is None or self.task is None or self.val_metric is None:
            raise RuntimeError("PretrainModule has no denoiser yet: call bind(task) or run it under a Trainer")
        return self.denoiser, self.task, self.val_metric

    def _require_bound(self) -> nn.Module:
        return self._bound()[0]

    def forward(self, x_t: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        """The denoiser's logits ``[B, L, V]``."""
        return self._require_bound()(x_t, t, cond)

    # ------------------------------------------------------------------ training
    def _noise_generator(self) -> torch.Generator:
        if self._trainer is not None:
            index, rank = self.trainer.fit_loop.total_batch_idx, self.global_rank
        else:
            index, rank = self._batches_seen, 0
        self._batches_seen += 1
        return torch.Generator(device=self.device).manual_seed(derive_seed(self.seed, 1, index, rank))

    def drop_cond(self, cond: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """``cond`` ``[B, Lc]`` with each row zeroed (null prompt) with probability ``cond_dropout``."""
        u = torch.rand(cond.shape[0], generator=generator, device=cond.device, dtype=torch.float32)  # [B]
        drop = u < self.cond_dropout  # [B]
        return cond.masked_fill(drop[:, None], 0)

    def sample_time(self, n: int, generator: torch.Generator | None = None, device=None) -> Tensor:
        """``n`` training times ``t = t_min + (t_max - t_min) u ** (1 / t_skew)``, float ``[n]``."""
        # float32 whatever the default dtype (bf16-true makes it bfloat16: times of 8-bit precision)
        u = torch.rand(n, generator=generator, device=device, dtype=torch.float32)  # [n]
        return self.t_min + (self.t_max - self.t_min) * u ** (1.0 / self.t_skew)

    def loss_on(self, x1: Tensor, cond: Tensor | None, generator: torch.Generator | None = None) -> Tensor:
        """The pretraining loss of one batch of clean data ``x1 [B, L]`` with prompts ``cond [B, Lc]``."""
        denoiser = self._require_bound()
        t = self.sample_time(x1.shape[0], generator, x1.device)  # [B]
        x_t = self.path.sample_xt(x1, t, generator)  # [B, L]
        if cond is not None:
            cond = self.drop_cond(cond, generator)
        if self.loss_fn.takes_head_logits(self.path):  # the head fused into the loss's chunks, where it can be
            logits = scoring_logits(denoiser, x_t, t, cond)
        else:
            logits = denoiser(x_t, t, cond)  # [B, L, V]
        return self.loss_fn(logits, x1, x_t, t, self.path)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        loss = self.loss_on(batch["x1"], batch["cond"], self._noise_generator())
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["x1"].shape[0])
        return loss

    def configure_optimizers(self) -> OptimizerLRSchedulerConfig:
        params = [p for p in self._require_bound().parameters() if p.requires_grad]
        decay = [p for p in params if p.dim() >= 2]
        no_decay = [p for p in params if p.dim() < 2]
        optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": self.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=self.lr,
            betas=self.betas,
        )
        total = max(int(self.trainer.estimated_stepping_batches), 1) if self._trainer is not None else 1
        return with_schedule(optimizer, self._lr_factor(total))

    def _lr_factor(self, total_steps: int):
        return warmup_cosine(self.warmup_steps, total_steps, self.min_lr_ratio)

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def generate(self, prompts: list[Any], generator: torch.Generator | None = None) -> Tensor:
        """Samples ``x1`` long ``[len(prompts), L]`` from the evaluation sampler."""
        denoiser, task, _ = self._bound()
        cond = task.encode_prompts(prompts).to(self.device)  # [B, Lc]
        traj = self.eval_sampler.rollout(
            denoiser, cond, batch_size=len(prompts), seq_len=task.seq_len, generator=generator, device=self.device
        )
        return traj.x1

    def validation_step(self, batch: Tensor, batch_idx: int) -> None:
        _, task, metric = self._bound()
        test = task.prompts("test")
        prompts = [test[i] for i in batch.tolist() for _ in range(self.eval_samples_per_prompt)]
        if not prompts:
            return
        generator = torch.Generator(device=self.device).manual_seed(
            derive_seed(self.seed, 2, batch_idx, self.global_rank)
        )
        x1 = self.generate(prompts, generator)  # [B, L]
        correct = task.correct(x1, prompts)  # [B] bool
        reward = task.reward(x1, prompts)  # [B]
        metric.update(correct.cpu(), prompts)
        self.log("val/reward", reward.float().mean(), prog_bar=True, batch_size=len(prompts), sync_dist=True)
        if sum(len(p) for _, p in self._grid) < self.grid_samples:
            self._grid.append((x1.cpu(), prompts))

    def on_validation_epoch_end(self) -> None:
        _, task, metric = self._bound()
        for key, value in metric.compute().items():  # {"acc/<category>": ..., "acc/overall": ...}
            self.log("val/" + key.replace("/", "_"), value, prog_bar=key == "acc/overall")
        metric.reset()
        grid, self._grid = self._grid, []
        if grid and self.grid_samples > 0 and self.global_rank == 0 and not self.trainer.sanity_checking:
            x1 = torch.cat([x for x, _ in grid])[: self.grid_samples]
            prompts = [p for _, ps in grid for p in ps][: self.grid_samples]
            png = task.render(x1, prompts, Path(self.sample_dir()) / f"step_{self.global_step:06d}.png")
            log_image(self.loggers, "samples/val", png, self.global_step)

    def sample_dir(self) -> str:
        """``<log_dir>/samples`` (the logger's version folder, else the trainer's root dir)."""
        trainer = self.trainer
        root = trainer.log_dir if trainer.log_dir is not None else trainer.default_root_dir
        return str(Path(root) / "samples")

    # ------------------------------------------------------------------ export
    def meta(self) -> dict[str, Any]:
        """What ``dflow_meta.json`` records: task, path, denoiser kind, evaluation and training settings."""
        denoiser, task, _ = self._bound()
        training = {
            "loss": type(self.loss_fn).__name__,
            "cond_dropout": self.cond_dropout,
            "global_step": int(self.global_step) if self._trainer is not None else 0,
            "lr": self.lr,
        }
        task_config = task_description(self._trainer, task)
        return model_meta(denoiser, task_config, task, self.path, self.eval_config, training)

    def export_pretrained(self, directory: str | Path) -> Path:
        """Write the denoiser with ``save_pretrained`` plus ``dflow_meta.json``; returns the directory."""
        return write_model_folder(self._require_bound(), self.meta(), directory)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.task is not None and self.denoiser is not None:
            checkpoint["dflow_meta"] = self.meta()
