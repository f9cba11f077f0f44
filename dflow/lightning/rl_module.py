"""RLModule: policy-gradient fine-tuning of a discrete flow model, assembled from swappable parts.

Each training step (manual optimisation)::

    prompts [P] -> G rollouts each (rollout sampler) -> rewards [B] -> advantages
    -> plan units -> old / reference units (no grad) -> num_inner_epochs x mini-batches:
       objective (+ KL) -> backward -> clip -> optimiser step

A step whose rewards or gradients are not finite is skipped (weights and optimiser untouched) or
stops the run, by configuration, and is counted in the logs.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.core.optimizer import LightningOptimizer
from torch import Tensor

from dflow.lightning.block_builders import check_block_rollouts
from dflow.lightning.builders import DenoiserBuilder
from dflow.lightning.evaluation import evaluate, evaluation_prompts, spread_prompts, write_grid
from dflow.lightning.export import model_meta, task_description, write_model_folder
from dflow.lightning.loggers import log_image
from dflow.lightning.precision import check_precision
from dflow.lightning.reliability import check_state_dict
from dflow.lightning.rewards import RewardSpec, build_rewards
from dflow.lightning.rl_config import (
    EvalConfig,
    FaultPolicy,
    OptimConfig,
    RolloutConfig,
    as_record,
    check_removed_arguments,
)
from dflow.lightning.rl_inner import NonFiniteStep, optimise
from dflow.lightning.rl_logs import compute_logs, step_logs
from dflow.lightning.rl_state import global_rng_state, set_global_rng_state
from dflow.lightning.schedules import warmup_cosine, with_schedule
from dflow.lightning.sharding import is_sharded, shard
from dflow.lightning.watch import TrainingWatch
from dflow.models.lora import AdaptersOff, LoRAConfig, apply_lora, has_adapters
from dflow.paths.base import ProbabilityPath
from dflow.rl.advantages import AdvantageEstimator, AdvantageInput, GroupAdvantage
from dflow.rl.aggregation import LossAggregation
from dflow.rl.kl import KLPenalty
from dflow.rl.likelihood.base import LikelihoodEstimator
from dflow.rl.objectives import Objective
from dflow.rl.update import Compute, PolicyUpdate
from dflow.rng import DeviceRNG
from dflow.sampling import Trajectory
from dflow.tasks import Task


class RLModule(L.LightningModule):
    """RL fine-tuning module (see the module docstring for one step).

    Args:
        denoiser: a builder (``dflow.lightning.builders.PretrainedDenoiser(path=...)`` for a base model).
        path: the probability path the base was trained on.
        likelihood / objective / advantage / kl / aggregation: the swappable parts (``dflow.rl``).
        rollout: the rollout sampler and ``group_size`` (:class:`~dflow.lightning.rl_config.RolloutConfig`;
            with ``rollout.block`` a :class:`~dflow.sampling.BlockSampler`, docs/block_sampling.md).
        optim: AdamW, the learning-rate schedule, clipping and the inner loop
            (:class:`~dflow.lightning.rl_config.OptimConfig`).
        evaluation: the evaluation sampler, its prompts and cadence
            (:class:`~dflow.lightning.rl_config.EvalConfig`; its own ``evaluation.block``).
        rewards: reward terms and weights (default: the task's partial-credit reward).
        faults: what a step with a bad reward or gradient does (:class:`~dflow.lightning.rl_config.FaultPolicy`).
        lora: train LoRA adapters instead of the denoiser's weights (:class:`~dflow.models.lora.LoRAConfig`;
            needs ``peft``). The base weights are frozen, the optimiser holds the adapters only,
            and the KL reference is the same network with its adapters switched off.
        reference_from_initial: the KL reference is the initial policy: a frozen copy of it, or with
            LoRA the base itself (adapters off: no second copy of the weights).
        seed: seeds the RL generator (rollouts, unit plans, mini-batch orders).
        compile_denoiser: call the denoiser through ``torch.compile`` (weights and checkpoints are
            unchanged; worth it on GPUs for long runs, the first steps pay the compilation).
        watch: warnings for runs that learn nothing or drift (:class:`~dflow.lightning.watch.TrainingWatch`;
            each said once per run).
    """

    def __init__(
        self,
        denoiser: DenoiserBuilder,
        path: ProbabilityPath,
        likelihood: LikelihoodEstimator,
        objective: Objective,
        advantage: AdvantageEstimator | None = None,
        kl: KLPenalty | None = None,
        aggregation: LossAggregation | None = None,
        rollout: RolloutConfig = RolloutConfig(),
        optim: OptimConfig = OptimConfig(),
        evaluation: EvalConfig = EvalConfig(),
        rewards: list[RewardSpec] | None = None,
        faults: FaultPolicy = FaultPolicy(),
        lora: LoRAConfig | None = None,
        reference_from_initial: bool = True,
        seed: int = 0,
        compile_denoiser: bool = False,
        watch: TrainingWatch | None = None,
        **removed: Any,
    ) -> None:
        super().__init__()
        check_removed_arguments(removed)
        # the records replace the arguments before save_hyperparameters reads them from this frame,
        # so the hyperparameters (and hparams.yaml) hold every field, defaults included
        rollout = self.rollout_config = as_record(RolloutConfig, rollout, "rollout")
        optim = self.optim = as_record(OptimConfig, optim, "optim")
        evaluation = self.eval_config = as_record(EvalConfig, evaluation, "evaluation")
        faults = self.fault_policy = as_record(FaultPolicy, faults, "faults")
        lora = self.lora = as_record(LoRAConfig, lora, "lora") if lora is not None else None
        self.save_hyperparameters(
            ignore=["denoiser", "path", "likelihood", "objective", "advantage", "kl", "aggregation", "watch", "removed"]
        )
        self.automatic_optimization = False
        self.builder, self.path = denoiser, path
        self.advantage = advantage if advantage is not None else GroupAdvantage()
        self.kl = kl if kl is not None else KLPenalty(beta=0.0)
        self.update = PolicyUpdate(
            likelihood, objective, self.kl, aggregation, self.optim.num_inner_epochs, self.optim.minibatch_size
        )
        self.update.check_advantages(self.advantage.per_step)
        if self.kl.enabled and not reference_from_initial:
            raise ValueError(
                f"kl.beta={self.kl.beta} > 0 needs a reference model: set reference_from_initial: true or beta: 0"
            )
        self.rollout_sampler = self.rollout_config.build(path, record_draws=likelihood.needs_draws, where="rollout")
        self.eval_sampler = self.eval_config.build(path, where="evaluation")
        likelihood.validate(self.rollout_sampler)
        group_size = self.rollout_config.group_size
        if group_size == 1 and isinstance(self.advantage, GroupAdvantage):
            raise ValueError(
                "rollout.group_size=1 with GroupAdvantage: a group of one rollout has no spread, so every "
                "group-relative advantage is 0 and nothing is learned; use rollout.group_size >= 2"
            )
        self.group_size, self.reward_specs, self.seed = group_size, rewards, seed
        self.compile_denoiser = compile_denoiser
        self.watch = watch if watch is not None else TrainingWatch()
        self.task: Task | None = None
        self.denoiser: torch.nn.Module | None = None
        # the frozen reference: a deep copy of the initial policy, or the policy with adapters off
        self.reference: torch.nn.Module | AdaptersOff | None = None
        self.compute = Compute()
        self.faults = {"bad_reward": 0, "nonfinite_grad": 0, "consecutive": 0}
        self.eval_history: list[dict[str, float]] = []
        # rollouts, unit plans and mini-batch orders draw from one seeded generator that lives on the
        # module's device (a CPU generator cannot draw CUDA tensors): see `generator`
        self.rng = DeviceRNG(seed)
        self.rl_steps = 0  # rollout batches trained on (== global_step unless steps were skipped)

    def setup(self, stage: str) -> None:
        if self._trainer is not None:
            check_precision(str(self.trainer.precision), self.trainer.strategy.root_device)

    def _bound(self) -> tuple[Task, torch.nn.Module]:
        """The task and denoiser ``attach_task`` set (``RuntimeError`` before it)."""
        if self.task is None or self.denoiser is None:
            raise RuntimeError("RLModule has no task yet: use a PromptDataModule or call attach_task(task)")
        return self.task, self.denoiser

    # ------------------------------------------------------------------ assembly
    def configure_model(self) -> None:
        if self.denoiser is None:
            task, split = self.task, "rl"
            datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
            if datamodule is not None:
                task = task if task is not None else datamodule.task
                split = getattr(datamodule, "split", split)  # batches index the data module's prompt split
            if task is None:
                raise ValueError("RLModule needs a task: use a PromptDataModule (data: ...) or call attach_task(task)")
            self.attach_task(task, split)
        strategy = type(self.trainer.strategy).__name__ if self._trainer is not None else ""
        if strategy == "FSDPStrategy":
            raise ValueError(
                "RLModule does not run under FSDPStrategy (FSDP1 wraps the whole module, but rollouts call the "
                "denoiser directly): use --trainer.strategy=ModelParallelStrategy (FSDP2, which shards each layer "
                "of the policy and of the KL reference; docs/scaling.md)"
            )
        mesh = getattr(self, "_device_mesh", None)  # set by ModelParallelStrategy (FSDP2)
        if mesh is not None and not is_sharded(self._bound()[1]):
            if getattr(self, "_compiled", None) is not None:
                raise ValueError("compile_denoiser: true is not supported with ModelParallelStrategy (FSDP2) yet")
            shard(self._bound()[1], mesh)
            if isinstance(self.reference, torch.nn.Module):  # a frozen copy is sharded the same way
                shard(self.reference, mesh)  # (with LoRA the reference is the sharded policy, adapters off)

    def attach_task(self, task, split: str = "rl") -> None:
        """Build the policy (and the frozen reference) for ``task``; validates vocabularies at start-up.
        Training batches are indices into ``task.prompts(split)``."""
        if task.vocab_size != self.path.vocab_size:
            raise ValueError(
                f"task {task.name!r} has vocab_size={task.vocab_size} but the path's source has "
                f"vocab_size={self.path.vocab_size}"
            )
        self.task = task
        self.rewards = build_rewards(self.reward_specs, task)
        self.train_prompts = task.prompts(split)
        test, ev = task.prompts("test"), self.eval_config
        self.eval_prompts = evaluation_prompts(test, ev.num_prompts, ev.samples_per_prompt, ev.samples_per_category)
        self.grid_prompts = spread_prompts(test, ev.num_grid_prompts)
        denoiser = self.builder.build(task, self.path)
        check_block_rollouts(
            denoiser,
            task,
            {"rollout": self.rollout_config, "evaluation": self.eval_config},
            self.rollout_sampler,
            self.update.likelihood,
        )
        self.denoiser = apply_lora(denoiser, self.lora) if self.lora is not None else denoiser
        # kept outside nn.Module's registry: the compiled wrapper must not add a second copy of the
        # weights to state_dict (checkpoints stay loadable with or without compilation)
        compiled = torch.compile(self.denoiser, dynamic=True) if self.compile_denoiser else None
        object.__setattr__(self, "_compiled", compiled)
        if self.kl.enabled:
            # With adapters (B = 0 at the start) the initial policy is the base network: the reference is
            # the same weights with the adapters off, never a copy. Otherwise a frozen deep copy.
            if has_adapters(self.denoiser):
                self.reference = AdaptersOff(self.denoiser)
            else:
                self.reference = copy.deepcopy(self.denoiser).eval().requires_grad_(False)

    def configure_optimizers(self):
        hp = self.optim
        params = [p for p in self._bound()[1].parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=hp.lr, weight_decay=hp.weight_decay)
        if hp.warmup_steps == 0 and hp.min_lr_ratio == 1.0:
            return optimizer  # constant lr: no scheduler (and none in checkpoints)
        total = hp.decay_steps
        if total is None:
            max_steps = self.trainer.max_steps if self._trainer is not None else -1
            if max_steps is None or max_steps < 1:
                raise ValueError(
                    f"min_lr_ratio={hp.min_lr_ratio} / warmup_steps={hp.warmup_steps} need a length: set "
                    f"optim.decay_steps or trainer.max_steps (got max_steps={max_steps})"
                )
            total = max_steps
        return with_schedule(optimizer, warmup_cosine(hp.warmup_steps, total, hp.min_lr_ratio))

    @property
    def generator(self) -> torch.Generator:
        """The RL step's generator, on the module's device (created there on first use, or moved)."""
        return self.rng.on(self.device)

    @property
    def policy(self):
        """What rollouts and losses call: the denoiser, or its ``torch.compile`` wrapper (same weights)."""
        return self._compiled if getattr(self, "_compiled", None) is not None else self.denoiser

    def forward(self, x_t: Tensor, t: Tensor, cond=None) -> Tensor:
        return self.policy(x_t, t, cond)

    # ------------------------------------------------------------------ one RL step
    def training_step(self, batch: Tensor, batch_idx: int) -> None:
        G = self.group_size
        task, denoiser = self._bound()
        self._forget_previous_step_logs()
        denoiser.eval()  # no dropout: the ratio of an unchanged policy must be exactly 1
        times: dict[str, float] = {}
        tic = time.perf_counter()
        prompts = [self.train_prompts[int(i)] for i in batch.flatten().tolist() for _ in range(G)]  # [B]
        cond = task.encode_prompts(prompts).to(self.device)
        traj = self._rollout(batch.flatten().tolist(), cond)
        tokens = task.seq_len + cond.shape[1]
        self.compute.add(forward=len(prompts) * traj.forward_passes, tokens_per_pass=tokens)
        times["rollout"] = time.perf_counter() - tic

        tic = time.perf_counter()
        x1 = traj.x1.cpu()
        try:
            record = self.rewards(x1, prompts)
            step_rewards = self._step_rewards(traj, prompts, record.total) if self.advantage.per_step else None
        except ValueError as err:
            return self._fault("bad_reward", err)
        times["reward"] = time.perf_counter() - tic

        tic = time.perf_counter()
        adv = self.advantage(AdvantageInput(record.total, G, step_rewards))
        batch_ready = self.update.prepare(
            self.policy,
            self.reference,
            traj,
            _to(adv, self.device),
            self.rollout_sampler,
            G,
            self.compute,
            self.generator,
        )
        opt = self.optimizers()
        assert isinstance(opt, LightningOptimizer)  # configure_optimizers returns one optimiser
        try:
            inner = optimise(
                self.update,
                self.policy,
                denoiser,
                opt,
                batch_ready,
                self.rollout_sampler,
                self.compute,
                batch_size=traj.batch_size,
                group_size=G,
                generator=self.generator,
                max_grad_norm=self.optim.max_grad_norm,
                device=self.device,
                backward=self.manual_backward,
            )
        except NonFiniteStep as err:
            return self._fault("nonfinite_grad", err)  # the step was undone; it is counted
        times["update"] = time.perf_counter() - tic
        self.faults["consecutive"] = 0
        lr_used = opt.optimizer.param_groups[0]["lr"]
        scheduler = self.lr_schedulers()  # manual optimisation: stepped here, once per RL step trained
        assert not isinstance(scheduler, list)  # configure_optimizers returns at most one scheduler
        if scheduler is not None:
            scheduler.step()

        logs = step_logs(
            record,
            correct=task.correct(x1, prompts).float(),
            traj=traj,
            seq_len=task.seq_len,
            grad_norms=inner.grad_norms,
            lr=lr_used,
            rl_step=self.rl_steps + 1,
            adv_stats=adv.stats,
            stats=inner.stats,
            times=times,
            compute=self.compute,
        )
        self.log_dict(logs, prog_bar=False, on_step=True, batch_size=len(prompts), sync_dist=True)
        self.log("reward", logs["train/reward"], prog_bar=True, on_step=True, batch_size=len(prompts), sync_dist=True)
        rollouts = x1.view(-1, G, x1.shape[-1])  # [P, G, L]
        identical = (rollouts == rollouts[:, :1]).all(dim=2).all(dim=1).float().mean().item()
        self.watch.check(
            self.rl_steps + 1, adv.stats["frac_zero_std_groups"], identical, logs["train/entropy"], logs.get("train/kl")
        )
        self.rl_steps += 1
        every = self.eval_config.every_n_steps
        if every and self.rl_steps % every == 0:
            self.run_evaluation()

    def _rollout(self, prompt_ids: list[int], cond: Tensor):
        G, L = self.group_size, self._bound()[0].seq_len
        if not self.rollout_config.seed_per_prompt:
            return self.rollout_sampler.rollout(
                self.policy, cond, batch_size=cond.shape[0], seq_len=L, generator=self.generator, device=self.device
            )
        parts = []
        for j, pid in enumerate(prompt_ids):
            gen = torch.Generator(device=self.device).manual_seed(
                (self.seed * 1_000_003 + self.rl_steps) * 1_000_003 + pid
            )
            parts.append(
                self.rollout_sampler.rollout(
                    self.policy, cond[j * G : (j + 1) * G], batch_size=G, seq_len=L, generator=gen, device=self.device
                )
            )
        return Trajectory.concat(parts)

    def _step_rewards(self, traj, prompts, final: Tensor) -> Tensor:
        """Reward of the posterior-argmax decode at every step, then the final reward: ``[B, K+1]``."""
        cols = [self.rewards(traj.posterior_argmax[k].long().cpu(), prompts).total for k in range(traj.num_steps)]
        return torch.stack([*cols, final], dim=1)

    def _forget_previous_step_logs(self) -> None:
        """Each logged row holds what its own RL step logged. Lightning keeps every ``on_step`` value
        until the epoch ends and writes them all again at each step, so a skipped step's row repeated
        the last trained step's reward, ratios and KL as if it had trained. Its result collection is
        not public API; without one (a bare module) there is nothing to forget."""
        results = getattr(self._trainer, "_results", None) if self._trainer is not None else None
        if results is not None and hasattr(results, "reset"):
            results.reset(fx="training_step")

    def _fault(self, kind: str, err: Exception) -> None:
        self.faults[kind] += 1
        self.faults["consecutive"] += 1
        self.log_dict({f"faults/{kind}": float(self.faults[kind])}, on_step=True, batch_size=1)
        stop = kind == "bad_reward" and self.fault_policy.on_bad_reward == "stop"
        if stop or self.faults["consecutive"] >= self.fault_policy.max_consecutive:
            raise ValueError(
                f"RL step {self.global_step} stopped after {self.faults['consecutive']} faulty step(s) in a row "
                f"({kind}): {err}"
            ) from err
        return None

    # ------------------------------------------------------------------ evaluation and grids
    def on_train_start(self) -> None:
        if self.eval_config.every_n_steps and not self.eval_history:
            self.run_evaluation()

    def on_train_end(self) -> None:
        if self.eval_config.every_n_steps and (
            not self.eval_history or self.eval_history[-1]["rl_step"] != self.rl_steps
        ):
            self.run_evaluation()

    # ``dflow validate --config <RL recipe> --ckpt_path <checkpoint>``: the module's own evaluation (the
    # evaluation sampler on its evaluation prompts), once per validation run; the loop's batches (test
    # prompt indices from PromptDataModule) only drive Lightning's loop.
    def validation_step(self, batch: Tensor, batch_idx: int) -> None:
        return None

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking or self.trainer.state.fn != "validate":
            return  # fit evaluates on its own schedule (evaluation.every_n_steps)
        metrics = self.run_evaluation()
        self.log_dict({k: v for k, v in metrics.items() if k.startswith("eval/")}, batch_size=1)

    def run_evaluation(self) -> dict[str, float]:
        """Strict accuracy per category on the test prompts with the evaluation sampler; writes a grid."""
        task, denoiser = self._bound()
        was_training = denoiser.training
        denoiser.eval()
        res = evaluate(
            self.policy,
            task,
            self.eval_sampler,
            self.eval_prompts,
            self.eval_config.batch_size,
            device=self.device,
            rewards=self.rewards,
        )
        grid = evaluate(self.policy, task, self.eval_sampler, self.grid_prompts, device=self.device)
        denoiser.train(was_training)
        metrics = {f"eval/{k.replace('/', '_')}": v for k, v in res.metrics.items()}
        metrics.update(compute_logs(self.compute))
        metrics["eval/rl_step"] = float(self.rl_steps)
        self.eval_history.append({"step": self.global_step, "rl_step": self.rl_steps, **metrics})
        log_dir = self.trainer.log_dir  # a broadcast under DDP: every rank must ask, not rank 0 alone
        if self.trainer.is_global_zero:
            for logger in self.loggers:
                logger.log_metrics(metrics, step=self.global_step)
            out = Path(log_dir or ".") / "samples" / f"rl_step_{self.rl_steps:05d}.png"
            write_grid(task, grid.x1, self.grid_prompts, out)
            log_image(self.loggers, "samples/eval", out, self.global_step)
        return metrics

    # ------------------------------------------------------------------ export
    def meta(self) -> dict[str, Any]:
        """``dflow_meta.json`` of the tuned policy: the task, path and evaluation sampler it is scored
        with, the base it started from and the RL method that tuned it."""
        task, denoiser = self._bound()
        training: dict[str, Any] = {
            "rl": True,
            "base": getattr(self.builder, "path", None),
            "rl_steps": self.rl_steps,
            "global_step": int(self.global_step) if self._trainer is not None else 0,
            "likelihood": repr(self.update.likelihood),
            "objective": repr(self.update.objective),
            "advantage": repr(self.advantage),
            "kl_beta": self.kl.beta,
            "lr": self.optim.lr,
            **({"lora_merged": dataclasses.asdict(self.lora)} if self.lora is not None else {}),
            **({"exported_from": self.exported_from} if getattr(self, "exported_from", None) else {}),
        }
        evaluation = self.eval_config.sampler()
        return model_meta(denoiser, task_description(self._trainer, task), task, self.path, evaluation, training)

    def export_pretrained(self, directory: str | Path) -> Path:
        """Write the tuned denoiser as a model folder (``save_pretrained`` + ``dflow_meta.json``), which
        ``PretrainedDenoiser``, ``dflow sample`` and another RL recipe load like a base. LoRA adapters
        are merged into the weights of the written copy (the module keeps training with them)."""
        return write_model_folder(self._bound()[1], self.meta(), directory)

    # ------------------------------------------------------------------ checkpoint extras
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["dflow_rl"] = {
            "generator": self.rng.state_dict(),
            "global_rng": global_rng_state(),
            "compute": vars(self.compute).copy(),
            "faults": dict(self.faults),
            "eval_history": list(self.eval_history),
            "rl_steps": self.rl_steps,
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        check_state_dict(self, checkpoint)  # a clear message, naming the file, before Lightning loads it
        extra = checkpoint.get("dflow_rl")
        if extra:
            self.rng.load_state_dict(extra["generator"])
            if "global_rng" in extra:  # rollouts use self.generator; anything else drawing at random continues too
                set_global_rng_state(extra["global_rng"])
            self.compute = Compute(**extra["compute"])
            self.faults.update(extra["faults"])
            self.eval_history = list(extra["eval_history"])
            self.rl_steps = int(extra["rl_steps"])


def _to(adv, device):
    adv.values = adv.values.to(device)
    return adv
