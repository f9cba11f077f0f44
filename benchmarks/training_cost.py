"""What one RL step costs per method, on the real `shapes` task and its embedded base.

Three measurements, each against a baseline taken in the same run (the machine is shared):

1. **Passes per rollout sample and update time per method.** Every shapes recipe (uniform base)
   runs a few RL steps exactly as configured (prompts, group size, rollout steps, likelihood,
   inner epochs), evaluation off. The compute accounting gives forward / backward passes per
   rollout sample (exact, not timed); the update phase's wall time is reported as a ratio to the
   same step's rollout time (median over the steps after the first).
2. **Peak memory per rollout size.** One RL step of a method at 32 / 64 / 128 rollouts, each in a
   fresh child process: on CPU the process's peak resident memory during the step above its
   resident memory just before it (Linux ``clear_refs``); on a GPU ``torch.cuda.max_memory_allocated``.
3. **The sampler on the real denoiser.** ``Sampler.rollout`` (records states, log-probs and
   posterior argmaxes) against the same loop recording nothing (``rollout_without_recording`` of
   ``benchmarks/sampler_speed.py``), with the shapes base and its prompts: CPU-time medians of
   interleaved repeats.

Usage::

    python benchmarks/training_cost.py            # full run; writes its block into docs/benchmarks.md
    python benchmarks/training_cost.py --quick    # 2 methods, fewer repeats, prints only
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
from lightning.pytorch.callbacks import Callback

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from sampler_speed import rollout_without_recording  # noqa: E402

from dflow.lightning.cli import cli_settings  # noqa: E402
from dflow.sampling import Sampler  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/common.py
from common import write_block  # noqa: E402

DOC = ROOT / "docs" / "benchmarks.md"
BEGIN, END = "<!-- training_cost:begin -->", "<!-- training_cost:end -->"
METHODS = ("naive_grpo", "dflowgrpo", "udm_grpo", "elbo_epg", "elbo_pepg", "elbo_par", "elbo_grpo", "stepwise", "demo")
MEMORY_METHODS = ("elbo_epg", "dflowgrpo")
ROLLOUT_SIZES = (32, 64, 128)
BASE = ROOT / "dflow" / "assets" / "shapes_uniform"


class StepLog(Callback):
    """Keeps every step's logged ``time/*`` and ``compute/*`` values."""

    def __init__(self) -> None:
        self.rows: list[dict[str, float]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.rows.append(
            {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(("time/", "compute/"))}
        )


def build(recipe: Path, extra: list[str]):
    """The recipe's trainer, model and data, built as ``dflow fit`` would (nothing run, no files)."""
    # the benchmark's own command line is not the recipe's: `args` is what counts
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
    args = [
        "--config",
        str(recipe),
        f"--model.init_args.denoiser.init_args.path={BASE}",
        "--model.init_args.evaluation.every_n_steps=0",
        "--trainer.logger=false",
        "--trainer.enable_checkpointing=false",
        "--trainer.callbacks=[]",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        *extra,
    ]
    cli_class, kwargs = cli_settings()
    return cli_class(**kwargs, run=False, args=args, save_config_callback=None)


def step_cost(method: str, steps: int) -> dict[str, float]:
    """Passes per rollout sample and the update / rollout time ratio of ``steps`` RL steps."""
    cli = build(ROOT / "recipes" / "shapes" / f"{method}.yaml", [f"--trainer.max_steps={steps}"])
    log = StepLog()
    cli.trainer.callbacks.append(log)
    cli.trainer.fit(cli.model, cli.datamodule)
    samples = cli.datamodule.hparams["prompts_per_step"] * cli.model.group_size
    last, before = log.rows[-1], (log.rows[-2] if len(log.rows) > 1 else {})
    per_sample = {k: (last[k] - before.get(k, 0.0)) / samples for k in last if k.startswith("compute/")}
    later = log.rows[1:] or log.rows
    rollout = statistics.median(r["time/rollout"] for r in later)
    update = statistics.median(r["time/update"] for r in later)
    return {
        "samples": samples,
        "rollout_steps": cli.model.rollout_sampler.num_steps,
        "forward": per_sample["compute/forward"],
        "backward": per_sample["compute/backward"],
        "fwd_equiv": per_sample["compute/fwd_equiv"],
        "rollout_s": rollout,
        "update_s": update,
        "update_over_rollout": update / rollout,
    }


def memory_child(method: str, samples: int) -> dict[str, float]:
    """Run in a child process: one RL step with ``samples`` rollouts; the peak memory it added."""
    recipe = ROOT / "recipes" / "shapes" / f"{method}.yaml"
    group = 8
    # one update over all rollouts: a recipe's mini-batches would cap the memory of larger batches
    extra = [
        f"--data.init_args.prompts_per_step={samples // group}",
        f"--model.init_args.rollout.group_size={group}",
        "--model.init_args.optim.minibatch_size=null",
        "--trainer.max_steps=1",
    ]
    cli = build(recipe, extra)
    cuda = torch.cuda.is_available()
    if cuda:
        cli.model.cuda()
        torch.cuda.reset_peak_memory_stats()
    before = _reset_peak_rss()
    cli.trainer.fit(cli.model, cli.datamodule)
    return {
        "rss_mib": (_status_kib("VmHWM") - before) / 1024,
        "cuda_mib": torch.cuda.max_memory_allocated() / 2**20 if cuda else 0.0,
    }


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def _reset_peak_rss() -> int:
    """Reset the peak resident set size to the current one (Linux: ``clear_refs`` 5); returns it in KiB.
    The peak then measured is what the RL step itself added, not what loading the model did."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return _status_kib("VmRSS")


def peak_memory(method: str, samples: int) -> dict[str, float]:
    command = [sys.executable, __file__, "--memory-child", method, str(samples)]
    with tempfile.TemporaryDirectory() as tmp:  # anything the run writes stays out of the checkout
        done = subprocess.run(command, capture_output=True, text=True, cwd=tmp, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"memory child {method} {samples} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def sampler_overhead(repeats: int, batch: int = 64, steps: int = 20) -> dict[str, float]:
    """CPU ms per rollout of the shapes base, recording vs not (interleaved, medians)."""
    cli = build(ROOT / "recipes" / "shapes" / "demo.yaml", [])
    module, task = cli.model, cli.datamodule.task
    module.attach_task(task, "test")
    test = task.prompts("test")
    cond = task.encode_prompts([test[i % len(test)] for i in range(batch)])
    sampler = Sampler(module.path, num_steps=steps)
    policy = module.policy.eval()
    out: dict[str, list[float]] = {"record": [], "plain": []}
    with torch.no_grad():
        for r in range(repeats):
            order = ("record", "plain") if r % 2 == 0 else ("plain", "record")
            for name in order:
                gen = torch.Generator().manual_seed(r)
                tic = time.process_time()
                if name == "record":
                    sampler.rollout(policy, cond, batch_size=batch, seq_len=task.seq_len, generator=gen)
                else:
                    rollout_without_recording(module.path, policy, sampler.times, batch, task.seq_len, gen, cond=cond)
                out[name].append(1000 * (time.process_time() - tic))
    record, plain = statistics.median(out["record"]), statistics.median(out["plain"])
    return {
        "batch": batch,
        "steps": steps,
        "seq_len": task.seq_len,
        "record_ms": record,
        "plain_ms": plain,
        "overhead": record / plain - 1,
    }


def render(cost: dict, memory: dict, sampler: dict, command: str) -> str:
    cpu = platform.processor() or platform.machine()
    lines = [
        BEGIN,
        "## Training cost per RL method (`benchmarks/training_cost.py`)",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {cpu}, {os.cpu_count()} CPU cores visible, "
        f"{'GPU ' + torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU'}; "
        f"torch {torch.__version__} with {torch.get_num_threads()} intra-op thread(s).",
        "",
        "Each shapes recipe (uniform base, `dflow/assets/shapes_uniform`) as configured, evaluation off. "
        "Passes are per rollout sample and exact (the RLModule's compute accounting); times are wall-clock "
        "medians over the steps after the first, and the update is read as a ratio to the same step's rollout.",
        "",
        "| recipe | rollouts / step | rollout steps | forward / sample | backward / sample | fwd-equiv / sample "
        "| rollout s | update s | update / rollout |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for method, c in cost.items():
        lines.append(
            f"| `{method}` | {c['samples']} | {c['rollout_steps']} | {c['forward']:.1f} | {c['backward']:.1f} "
            f"| {c['fwd_equiv']:.1f} | {c['rollout_s']:.2f} | {c['update_s']:.2f} "
            f"| {c['update_over_rollout']:.2f} |"
        )
    unit = (
        "GPU MiB, max allocated"
        if torch.cuda.is_available()
        else "MiB: the process's peak resident memory during the step, above its resident memory before it"
    )
    lines += [
        "",
        f"Peak memory of one RL step by rollouts per step ({unit}):",
        "",
        "| recipe | " + " | ".join(f"{s} rollouts" for s in ROLLOUT_SIZES) + " |",
        "|---|" + "---|" * len(ROLLOUT_SIZES),
    ]
    for method, row in memory.items():
        lines.append(f"| `{method}` | " + " | ".join(f"{row[s]:.0f}" for s in ROLLOUT_SIZES) + " |")
    lines += [
        "",
        f"The sampler on the shapes base ({sampler['batch']} prompts x {sampler['seq_len']} tokens, "
        f"{sampler['steps']} steps; CPU ms per rollout, medians of interleaved repeats): recording "
        f"{sampler['record_ms']:.0f} ms, not recording {sampler['plain_ms']:.0f} ms: recording costs "
        f"{100 * sampler['overhead']:+.1f}%.",
        END,
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="2 methods, 2 steps, fewer repeats; prints only")
    ap.add_argument("--write", action="store_true", help="with --quick: write the block anyway")
    ap.add_argument("--steps", type=int, default=3, help="RL steps per method (default 3)")
    ap.add_argument("--memory-child", nargs=2, metavar=("METHOD", "SAMPLES"), help=argparse.SUPPRESS)
    opts = ap.parse_args(argv)
    if opts.memory_child:
        method, samples = opts.memory_child
        print(json.dumps(memory_child(method, int(samples))))
        return
    torch.set_num_threads(1)  # comparable numbers on a shared CPU (see docs/benchmarks.md)
    methods = METHODS[:2] if opts.quick else METHODS
    sizes = ROLLOUT_SIZES
    cost = {}
    for method in methods:
        print(f"step cost: {method}", flush=True)
        cost[method] = step_cost(method, 2 if opts.quick else opts.steps)
    memory: dict[str, dict[int, float]] = {}
    key = "cuda_mib" if torch.cuda.is_available() else "rss_mib"
    for method in MEMORY_METHODS[:1] if opts.quick else MEMORY_METHODS:
        memory[method] = {}
        for size in sizes:
            print(f"memory: {method} x {size}", flush=True)
            memory[method][size] = peak_memory(method, size)[key]
    sampler = sampler_overhead(3 if opts.quick else 9)
    command = "python benchmarks/training_cost.py" + (" --quick" if opts.quick else "")
    text = render(cost, memory, sampler, command)
    print(text)
    if not opts.quick or opts.write:
        write_block(DOC, BEGIN, END, text)
        print(f"wrote {DOC}")


if __name__ == "__main__":
    main()
