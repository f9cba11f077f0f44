"""Every check that needs a GPU, in one command (run it whenever a GPU is lent; it also runs on a CPU).

1. One short RL run per method on the device (and UDM-GRPO with LoRA adapters; with QLoRA where
   bitsandbytes is installed) (a width-16 transformer on an 8x8 shapes task, 2 RL
   steps of 2 inner epochs x 2 mini-batches): the RL step draws rollouts, unit plans and mini-batch
   orders with a generator on the module's device (a CPU generator crashed RL on GPUs at the first
   step), and the first mini-batch of each RL step has ratio exactly 1.
2. The embedded shapes base on the device: one evaluation as the RL module runs it, and rollout
   throughput (samples x steps per second) with the peak device memory.
3. Scale (``--scale 1b``, the default on a GPU): a 1.2B-parameter DiffusionGemma built from a config,
   bf16, LoRA adapters and gradient checkpointing, rolled out with BlockSampler + EntropyBoundKernel
   and updated once; throughput, peak memory and the first ratio (scripts/scale_check.py).

Prints a markdown table (the figures for docs/benchmarks.md) and, with ``--json FILE``, writes them.
Exit status 1 if a check fails.

Usage: python scripts/gpu_check.py [--device cuda] [--json out.json]
       scripts/gpu_check.sh (the same, with PYTHONPATH set for a checkout without an install)
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader

from dflow.lightning import EvalConfig, OptimConfig, RolloutConfig
from dflow.lightning.builders import PretrainedDenoiser, TransformerDenoiser
from dflow.lightning.evaluation import evaluate, evaluation_prompts
from dflow.lightning.rl_module import RLModule
from dflow.models.lora import LoRAConfig
from dflow.paths import MaskSource, MetricPath, MixturePath, UniformSource
from dflow.rl import (
    EPG,
    AllButLast,
    ClippedSurrogate,
    ELBOLikelihood,
    ForwardReconstruction,
    GroupAdvantage,
    IntermediateActionLikelihood,
    KLPenalty,
    MeanFieldLikelihood,
    SampleSumAggregation,
    StepwiseGainAdvantage,
    TrajectoryLikelihood,
)
from dflow.sampling import SamplerConfig
from dflow.tasks import ShapesTask

ROOT = Path(__file__).resolve().parents[1]
V = 7  # the shapes palette

METHODS: dict[str, Callable[[], dict]] = {
    "udm_grpo": lambda: dict(
        path=MixturePath(UniformSource(V)),
        likelihood=ForwardReconstruction(2, 4, 1),
        objective=ClippedSurrogate(1e-4),
        kl=KLPenalty(0.05, "k3"),
    ),
    "elbo_epg": lambda: dict(
        path=MixturePath(UniformSource(V)),
        likelihood=ELBOLikelihood(3, 4),
        objective=EPG(),
        advantage=GroupAdvantage(scale="none", coef=0.1, clip=None),
        aggregation=SampleSumAggregation(),
    ),
    "dflowgrpo": lambda: dict(
        path=MixturePath(UniformSource(V)),
        likelihood=TrajectoryLikelihood(AllButLast(), True),
        objective=ClippedSurrogate(1e-3, 1.5e-3),
        advantage=GroupAdvantage(scale="batch"),
    ),
    "dflowgrpo_mc_metric": lambda: dict(
        path=MetricPath(embedding=torch.eye(V), exact_max_vocab=0, n_mc=4),
        likelihood=TrajectoryLikelihood(AllButLast(), True),
        objective=ClippedSurrogate(1e-3, 1.5e-3),
    ),
    "naive_grpo": lambda: dict(
        path=MixturePath(UniformSource(V)), likelihood=IntermediateActionLikelihood(), objective=ClippedSurrogate(1e-4)
    ),
    "stepwise": lambda: dict(
        path=MixturePath(UniformSource(V)),
        likelihood=TrajectoryLikelihood(),
        objective=ClippedSurrogate(0.2),
        advantage=StepwiseGainAdvantage(),
    ),
    "diffu_grpo_mask": lambda: dict(
        path=MixturePath(MaskSource(V)),
        likelihood=MeanFieldLikelihood(per_token=True),
        objective=ClippedSurrogate(0.5),
        kl=KLPenalty(0.04, "k3"),
    ),
}


# LoRA (peft): the same UDM-GRPO run with rank-4 adapters, the KL to the adapters-off base; QLoRA (4-bit
# base layers, bitsandbytes) only where CUDA and bitsandbytes are there (it has never run: no GPU yet)
METHODS["udm_grpo_lora"] = lambda: {**METHODS["udm_grpo"](), "lora": LoRAConfig(rank=4, alpha=8.0)}
if torch.cuda.is_available() and importlib.util.find_spec("bitsandbytes") is not None:
    METHODS["udm_grpo_qlora"] = lambda: {
        **METHODS["udm_grpo"](),
        "lora": LoRAConfig(rank=4, alpha=8.0, load_in_4bit=True),
    }


class Prompts(L.LightningDataModule):
    def __init__(self, task, steps: int, per_step: int) -> None:
        super().__init__()
        self.task = task
        n = len(task.prompts("rl"))
        gen = torch.Generator().manual_seed(0)
        self.batches = [torch.randperm(n, generator=gen)[:per_step] for _ in range(steps)]

    def train_dataloader(self):
        return DataLoader(self.batches, batch_size=None)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_mb(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def rl_check(name: str, device: torch.device) -> dict:
    parts = METHODS[name]()
    path = parts.pop("path")
    task = ShapesTask(height=8, width=8, pretrain_prompts_per_category=4, test_prompts_per_category=2)
    module = RLModule(
        TransformerDenoiser(hidden_size=16, num_layers=1, num_heads=2),
        path,
        **parts,
        rollout=RolloutConfig(num_steps=4, group_size=4),
        optim=OptimConfig(lr=1e-3, num_inner_epochs=2, minibatch_size=4),
        evaluation=EvalConfig(num_steps=4, every_n_steps=0),
    )
    ratios: list[tuple[float, float]] = []
    loss = module.update.loss

    def spy(*args, **kwargs):
        out = loss(*args, **kwargs)
        ratios.append((out.stats["ratio_min"], out.stats["ratio_max"]))
        return out

    module.update.loss = spy
    trainer = L.Trainer(
        accelerator=device.type,
        devices=1,
        max_steps=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    _reset_peak(device)
    start = time.perf_counter()
    trainer.fit(module, datamodule=Prompts(task, 2, 2))
    _sync(device)
    seconds = (time.perf_counter() - start) / 2
    on_policy = all(ratios[i] == (1.0, 1.0) for i in range(0, len(ratios), 4))
    ok = (
        module.generator.device.type == device.type
        and module.device.type == device.type
        and module.rl_steps == 2
        and on_policy
    )
    return {
        "check": f"RL steps: {name}",
        "ok": ok,
        "s_per_step": round(seconds, 3),
        "peak_mb": _peak_mb(device),
        "note": f"generator on {module.generator.device}, first mini-batch ratio 1: {on_policy}",
    }


def base_check(device: torch.device) -> list[dict]:
    task = ShapesTask()
    path = MixturePath(UniformSource(V))
    model = PretrainedDenoiser(str(ROOT / "dflow/assets/shapes_uniform")).build(task, path).to(device).eval()
    sampler = SamplerConfig(num_steps=20).build(path)
    prompts = evaluation_prompts(task.prompts("test"), samples_per_category=64)
    _reset_peak(device)
    start = time.perf_counter()
    res = evaluate(model, task, sampler, prompts, device=device)
    _sync(device)
    eval_s = time.perf_counter() - start
    out = [
        {
            "check": "evaluation of the shapes base (384 samples, 20 steps)",
            "ok": 0.0 <= res.metrics["acc/overall"] <= 1,
            "s_per_step": round(eval_s, 3),
            "peak_mb": _peak_mb(device),
            "note": f"acc {res.metrics['acc/overall']:.3f}, reward {res.metrics['reward']:.3f}",
        }
    ]
    for batch in (128, 1024):
        cond = task.encode_prompts([prompts[i % len(prompts)] for i in range(batch)]).to(device)
        roll = SamplerConfig(num_steps=10).build(path)
        gen = torch.Generator(device=device).manual_seed(0)
        with torch.no_grad():
            roll.rollout(model, cond, batch_size=batch, seq_len=task.seq_len, generator=gen, device=device)  # warm-up
            _sync(device)
            _reset_peak(device)
            start = time.perf_counter()
            roll.rollout(model, cond, batch_size=batch, seq_len=task.seq_len, generator=gen, device=device)
            _sync(device)
        seconds = time.perf_counter() - start
        out.append(
            {
                "check": f"rollout of the shapes base, batch {batch} x 10 steps",
                "ok": True,
                "s_per_step": round(seconds / 10, 4),
                "peak_mb": _peak_mb(device),
                "note": f"{batch * 10 / seconds:,.0f} sample-steps/s",
            }
        )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
    parser.add_argument("--only", nargs="*", default=None, help="RL methods to check (default: all)")
    parser.add_argument(
        "--scale",
        choices=["1b", "tiny", "none"],
        default=None,
        help="the DiffusionGemma + LoRA + checkpointing item (scripts/scale_check.py); default 1b on a GPU, "
        "none on a CPU or with --only",
    )
    opts = parser.parse_args(argv)
    device = torch.device(opts.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device {device} ({name}), torch {torch.__version__}, lightning {L.__version__}")
    rows = []
    for method in opts.only if opts.only is not None else METHODS:
        try:
            rows.append(rl_check(method, device))
        except Exception as err:  # noqa: BLE001 - a check that crashes is a failed check; keep going
            traceback.print_exc()
            rows.append({"check": f"RL steps: {method}", "ok": False, "note": f"{type(err).__name__}: {err}"})
    if opts.only is None:
        try:
            rows += base_check(device)
        except Exception as err:  # noqa: BLE001
            traceback.print_exc()
            rows.append({"check": "shapes base", "ok": False, "note": f"{type(err).__name__}: {err}"})
    scale = opts.scale or ("1b" if device.type == "cuda" and opts.only is None else "none")
    if scale != "none":
        try:
            spec = importlib.util.spec_from_file_location("scale_check", Path(__file__).with_name("scale_check.py"))
            assert spec is not None and spec.loader is not None
            scale_module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(scale_module)
            rows.append(scale_module.scale_check(device, scale))
        except Exception as err:  # noqa: BLE001
            traceback.print_exc()
            rows.append({"check": f"scale ({scale})", "ok": False, "note": f"{type(err).__name__}: {err}"})
    print("\n| check | ok | seconds | peak MiB | note |\n|---|---|---|---|---|")
    for r in rows:
        peak = "" if r.get("peak_mb") is None else f"{r['peak_mb']:.0f}"
        ok = "yes" if r["ok"] else "**NO**"
        print(f"| {r['check']} | {ok} | {r.get('s_per_step', '')} | {peak} | {r.get('note', '')} |")
    if opts.json:
        Path(opts.json).write_text(json.dumps({"device": str(device), "name": name, "rows": rows}, indent=2))
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
