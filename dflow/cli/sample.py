"""``dflow sample``: score a model folder, run folder or checkpoint on a task's prompts with the same
evaluation as RL runs, write a PNG grid and print strict accuracy per category."""

from __future__ import annotations

import argparse
import json
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from dflow.lightning.block_builders import DiffusionGemma
from dflow.lightning.builders import PretrainedDenoiser, read_meta, resolve_path
from dflow.lightning.describe import instantiate
from dflow.lightning.evaluation import EVAL_BATCH_SIZE, EVAL_SEED, evaluate, evaluation_prompts
from dflow.lightning.export import sampler_meta
from dflow.paths import LinearScheduler, MaskSource, MixturePath, ProbabilityPath, UniformSource
from dflow.sampling import SamplerConfig
from dflow.tasks import Task, get_task


def default_path(directory: Path, meta: dict[str, Any], vocab_size: int) -> ProbabilityPath:
    """The path the base was trained with (from its meta), else mask/uniform from its config."""
    if "path" in meta:
        return instantiate(meta["path"])
    config = json.loads((directory / "config.json").read_text()) if (directory / "config.json").is_file() else {}
    source = MaskSource(vocab_size) if config.get("mask_id") is not None else UniformSource(vocab_size)
    return MixturePath(source, LinearScheduler())


def load_task(name: str | None, meta: dict[str, Any], task_args: dict[str, Any] | None) -> Task:
    """``get_task(name, **task_args)``; the name and arguments default to the base's meta."""
    recorded = meta.get("task", {}) if isinstance(meta.get("task"), dict) else {}
    name = name or meta.get("task_name")
    if name is None:
        raise ValueError("task=None: pass --task NAME (the checkpoint has no dflow_meta.json naming its task)")
    if task_args is None:
        task_args = recorded.get("init_args", {}) if name == meta.get("task_name") else {}
    return get_task(name, **task_args)


@torch.no_grad()
def evaluate_base(
    checkpoint: str,
    task: Task,
    path: ProbabilityPath,
    sampler: SamplerConfig,
    split: str = "test",
    num_prompts: int | None = None,
    samples_per_prompt: int = 1,
    batch_size: int = EVAL_BATCH_SIZE,
    seed: int = EVAL_SEED,
    device: str = "cpu",
    samples_per_category: int | None = None,
) -> tuple[dict[str, float], torch.Tensor, list[Any]]:
    """Score a base on ``split`` with the same functions as RL evaluation
    (:func:`~dflow.lightning.evaluation.evaluation_prompts` and :func:`~dflow.lightning.evaluation.evaluate`):
    the same prompts, sampler, batch size and seed give the same numbers as an RL run's step-0
    evaluation. Returns ``({"acc/<category>", "acc/overall", "reward", "n"}, x1, prompts)``, plus the
    task's extra metrics (sudoku: ``"cells/<category>"``, ``"cells/overall"``)."""
    denoiser = load_denoiser(checkpoint, task, path).to(device).eval()
    prompts = evaluation_prompts(task.prompts(split), num_prompts, samples_per_prompt, samples_per_category)
    res = evaluate(denoiser, task, sampler.build(path), prompts, batch_size, seed, device)
    return {**res.metrics, "n": len(prompts)}, res.x1, prompts


def load_denoiser(folder: str, task: Task, path: ProbabilityPath) -> torch.nn.Module:
    """The model folder's denoiser: a DiffusionGemma one (its meta says so) or what ``PretrainedDenoiser`` loads."""
    meta = read_meta(resolve_path(folder))
    if meta.get("denoiser") == "DiffusionGemmaDenoiser":
        recorded = meta.get("diffusion_gemma", {})
        return DiffusionGemma(path=folder, self_conditioning=recorded.get("self_conditioning", True)).build(task, path)
    return PretrainedDenoiser(folder).build(task, path)


def recorded_sampler(recorded: dict[str, Any], opts: argparse.Namespace) -> SamplerConfig:
    """The evaluation sampler a model folder records (``meta["eval"]``, a block setting included), with the
    command line's ``--steps`` / ``--guidance`` / ``--time-grid`` / ``--temperature`` over it."""
    return SamplerConfig(
        num_steps=opts.steps if opts.steps is not None else recorded.get("num_steps", 20),
        guidance_scale=opts.guidance if opts.guidance is not None else recorded.get("guidance_scale", 2.0),
        time_grid=opts.time_grid or recorded.get("time_grid", "uniform"),
        temperature=opts.temperature if opts.temperature is not None else recorded.get("temperature", 1.0),
        shift=recorded.get("shift", 3.0),
        block=recorded.get("block"),  # a BlockSampler, as the run evaluated (steps are per block then)
    )


def parse_task_args(text: str | None) -> dict[str, Any] | None:
    """``--task-args`` as a dict; ``ValueError`` quoting the flag and its value when it is not a JSON object."""
    if not text:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"--task-args {text!r} is not valid JSON ({err}); write e.g. '{{\"height\": 8}}'") from err
    if not isinstance(value, dict):
        raise ValueError(f"--task-args {text!r} must be a JSON object of task arguments, got a {type(value).__name__}")
    return value


def sample_main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="dflow sample",
        description="Sample a pretrained base for a task's prompts, write a PNG grid, print strict accuracy.",
    )
    parser.add_argument(
        "--checkpoint",
        required=True,
        help="a model folder (e.g. dflow/assets/shapes_uniform, or what dflow export wrote), a run folder "
        "(runs/<name>/version_<n>) or a checkpoint of it (a pretraining or an RL run)",
    )
    parser.add_argument("--task", default=None, help="task name (default: the one in the base's dflow_meta.json)")
    parser.add_argument("--task-args", default=None, help="JSON keyword arguments of the task, e.g. '{\"height\": 12}'")
    parser.add_argument("--out", default="samples.png", help="PNG grid to write")
    parser.add_argument("--steps", type=int, default=None, help="sampler steps (default: the base's eval setting)")
    parser.add_argument("--guidance", type=float, default=None, help="CFG scale (default: the base's eval setting)")
    parser.add_argument("--time-grid", default=None, help="uniform | shifted | cosine")
    parser.add_argument("--temperature", type=float, default=None, help="default: the base's eval setting")
    parser.add_argument("--num", type=int, default=32, help="samples shown in the PNG grid")
    parser.add_argument("--split", default="test", help="prompt split evaluated")
    parser.add_argument(
        "--prompts", type=int, default=None, help="prompts evaluated (taken round-robin over categories; default all)"
    )
    parser.add_argument("--samples-per-prompt", type=int, default=1)
    parser.add_argument(
        "--samples-per-category",
        type=int,
        default=None,
        help="instead, exactly this many samples per category (RL recipes: evaluation.samples_per_category)",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=EVAL_BATCH_SIZE,
        help="samples per batch (the noise depends on it; RL recipes: evaluation.batch_size)",
    )
    parser.add_argument(
        "--seed", type=int, default=EVAL_SEED, help="evaluation noise seed (RL evaluations use %(default)s)"
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", default=None, help="also write the accuracies to this JSON file")
    opts = parser.parse_args(list(argv))

    given = Path(opts.checkpoint)
    if given.is_file() or (
        given.is_dir() and (given / "config.yaml").is_file() and not (given / "config.json").is_file()
    ):
        # a run folder or a training checkpoint (an RL-tuned policy, a pretraining run): export it first
        from dflow.lightning.export import export_run

        with tempfile.TemporaryDirectory() as tmp:
            return _sample(opts, export_run(given, Path(tmp) / "model"), source=given)
    return _sample(opts, resolve_path(opts.checkpoint))


def _sample(opts: argparse.Namespace, directory: Path, source: Path | None = None) -> int:
    """``dflow sample`` on a model folder (exported from ``source``, a run folder or checkpoint, if given)."""
    meta = read_meta(directory)
    task = load_task(opts.task, meta, parse_task_args(opts.task_args))
    path = default_path(directory, meta, task.vocab_size)
    sampler = recorded_sampler(meta.get("eval", {}), opts)
    result, x1, prompts = evaluate_base(
        str(directory),
        task,
        path,
        sampler,
        opts.split,
        opts.prompts,
        opts.samples_per_prompt,
        opts.batch_size,
        opts.seed,
        opts.device,
        opts.samples_per_category,
    )
    out = task.render(x1[: opts.num], prompts[: opts.num], opts.out)
    print(
        f"{task.name} {opts.split}: {result['n']} samples, steps={sampler.num_steps}, "
        f"guidance={sampler.guidance_scale}, grid={sampler.time_grid}"
        + (f", block_len={sampler.block.block_len}, kernel={sampler.block.kernel!r}" if sampler.block else "")
    )
    for key, value in result.items():
        if "/" in key:  # the strict accuracy and the task's extra metrics (sudoku's cells/*)
            print(f"  {key:<24} {value:.3f}")
    print(f"  {'reward (mean)':<24} {result['reward']:.3f}")
    print(f"wrote {out}")
    if opts.json:
        Path(opts.json).write_text(
            json.dumps({"checkpoint": str(source or directory), "sampler": sampler_meta(sampler), **result}, indent=2)
        )
    return 0
