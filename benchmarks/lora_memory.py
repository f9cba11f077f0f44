"""What one RL update adds to a model's memory, full fine-tuning against LoRA, measured in the same run.

One RL update, as ``RLModule`` runs it: set up the policy (LoRA: wrap the base in adapters), the KL
reference (full: a frozen deep copy of the policy; LoRA: the same network with the adapters off) and
AdamW over the trainable parameters; then ``PolicyUpdate.prepare`` (old and reference values, no
gradient), one mini-batch loss (UDM-GRPO: ``ForwardReconstruction`` units, clipped surrogate, k3 KL),
backward, and the first optimiser step (which allocates AdamW's two moments). Both variants start from
the same base weights and score the same rollouts; the adapters start at zero, so both references
must give the same values (checked).

**What is measured.** The peak of the bytes held by CPU tensors allocated during the update, above what
existed before it (the base model's weights and the rollouts are not counted): ``torch.profiler``
with ``profile_memory=True`` records every allocation and free of the CPU allocator, and the peak is
the largest running sum of their sizes in time order (the tensors' own accounting, not the process's
resident memory). Beside it, exact sizes read from the tensors after the step: trainable parameters,
gradients, AdamW state, and the reference's own weights.

Usage::

    python benchmarks/lora_memory.py            # default sizes; writes its block into docs/benchmarks.md
    python benchmarks/lora_memory.py --quick    # small sizes; prints only (add --write to write)
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from dflow.models import DFlowConfig, DFlowTransformer
from dflow.models.lora import AdaptersOff, LoRAConfig, apply_lora
from dflow.paths import MixturePath, UniformSource
from dflow.rl import ClippedSurrogate, Compute, ForwardReconstruction, GroupAdvantage, KLPenalty, PolicyUpdate
from dflow.rl.advantages import AdvantageInput
from dflow.sampling import Sampler

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/common.py
from common import cpu_peak, write_block  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "benchmarks.md"
BEGIN, END = "<!-- lora_memory:begin -->", "<!-- lora_memory:end -->"
MIB = 2**20


@dataclass
class Update:
    """One variant's update: the profiled peak and exact sizes read from the tensors after it."""

    peak: int  # bytes, above the base weights and the rollouts
    trainable: int  # trainable scalars
    total: int  # all scalars of the policy (base + adapters)
    grads: int  # bytes of gradients
    optimiser_state: int  # bytes of AdamW's state (exp_avg, exp_avg_sq, step)
    reference: int  # bytes of weights held by the reference and not by the policy
    ref_logp: torch.Tensor  # the reference's values of the units [B, U]
    cpu_s: float

    @property
    def weight_side(self) -> int:
        """Bytes that scale with the weights: the reference's own copy, gradients and AdamW state."""
        return self.reference + self.grads + self.optimiser_state


def nbytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def build_base(args: argparse.Namespace) -> DFlowTransformer:
    torch.manual_seed(0)
    config = DFlowConfig(
        vocab_size=args.vocab,
        mask_id=None,
        seq_len=args.seq_len,
        prompt_len=args.prompt_len,
        prompt_vocab_size=64,
        hidden_size=args.hidden,
        num_layers=args.layers,
        num_heads=args.heads,
        time_conditioning=True,
    )
    return DFlowTransformer(config).eval()


def rollouts(args: argparse.Namespace, path: MixturePath):
    """The rollout batch both variants score: ``P = batch / G`` prompts x ``G`` rollouts of the base."""
    base = build_base(args)
    sampler = Sampler(path, num_steps=args.steps)
    gen = torch.Generator().manual_seed(1)
    cond = torch.randint(1, 64, (args.batch // args.group, args.prompt_len), generator=gen)
    cond = cond.repeat_interleave(args.group, dim=0)  # [B, Lc]
    traj = sampler.rollout(base, cond, batch_size=args.batch, seq_len=args.seq_len, generator=gen)
    rewards = torch.rand(args.batch, generator=gen)
    return sampler, traj, GroupAdvantage()(AdvantageInput(rewards, args.group))


def one_update(args: argparse.Namespace, lora: LoRAConfig | None, sampler, traj, advantages) -> Update:
    base = build_base(args)  # the same weights for both variants (seed 0); not counted in the peak
    update = PolicyUpdate(
        ForwardReconstruction(num_timesteps=args.units, grid_steps=args.steps, max_start=0),
        ClippedSurrogate(0.2),
        KLPenalty(0.05, "k3"),
    )
    held: dict = {}

    def step() -> None:
        policy = apply_lora(base, lora) if lora is not None else base
        reference = AdaptersOff(policy) if lora is not None else copy.deepcopy(policy).requires_grad_(False)
        optimiser = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=1e-4)
        batch = update.prepare(policy, reference, traj, advantages, sampler, args.group, Compute(), torch.Generator())
        out = update.loss(policy, batch, torch.arange(args.batch), sampler, Compute())
        out.loss.backward()
        optimiser.step()
        held.update(policy=policy, reference=reference, optimiser=optimiser, ref_logp=batch.ref_logp)

    tic = time.process_time()
    peak = cpu_peak(step)
    seconds = time.process_time() - tic
    policy, reference, optimiser = held["policy"], held["reference"], held["optimiser"]
    params = list(policy.parameters())
    state = [t for s in optimiser.state.values() for t in s.values() if torch.is_tensor(t)]
    own = {p.untyped_storage().data_ptr() for p in params}
    ref_params = [] if isinstance(reference, AdaptersOff) else list(reference.parameters())
    return Update(
        peak=peak,
        trainable=sum(p.numel() for p in params if p.requires_grad),
        total=sum(p.numel() for p in params),
        grads=nbytes(p.grad for p in params if p.grad is not None),
        optimiser_state=nbytes(state),
        reference=nbytes(p for p in ref_params if p.untyped_storage().data_ptr() not in own),
        ref_logp=held["ref_logp"],
        cpu_s=seconds,
    )


def run(args: argparse.Namespace) -> dict:
    path = MixturePath(UniformSource(args.vocab))
    sampler, traj, advantages = rollouts(args, path)
    full = one_update(args, None, sampler, traj, advantages)
    lora = LoRAConfig(rank=args.rank, alpha=2.0 * args.rank)
    adapted = one_update(args, lora, sampler, traj, advantages)
    if not torch.equal(full.ref_logp, adapted.ref_logp):  # the deep copy and the adapters-off network are one model
        raise RuntimeError("the reference values of the two variants differ")
    tokens = args.prompt_len + args.seq_len
    return {
        "full": full,
        "lora": adapted,
        "sizes": (
            f"`DFlowTransformer`, {args.layers} layers, hidden {args.hidden}, {args.heads} heads, V={args.vocab}, "
            f"time-conditioned, float32; rollouts of {args.batch} = {args.batch // args.group} prompts x "
            f"{args.group}, {tokens} tokens each ({args.prompt_len} prompt + {args.seq_len} state), {args.steps} "
            f"steps; UDM-GRPO with {args.units} scored states per rollout, one mini-batch, k3 KL 0.05; LoRA rank "
            f"{args.rank}, alpha {2 * args.rank} on qkv / out / up / down"
        ),
    }


def render(result: dict, command: str) -> str:
    full, lora = result["full"], result["lora"]
    cpu = platform.processor() or platform.machine()

    def row(name: str, a: float, b: float, unit: str = "MiB") -> str:
        scale = MIB if unit == "MiB" else 1
        fa, fb = (f"{a / scale:.1f}", f"{b / scale:.1f}") if unit == "MiB" else (f"{a:,}", f"{b:,}")
        ratio = f"{b / a:.3f}" if a else "-"
        return f"| {name} | {fa} | {fb} | {ratio} |"

    lines = [
        BEGIN,
        "## LoRA: what one RL update adds to the model (`benchmarks/lora_memory.py`)",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {cpu}, {os.cpu_count()} CPU cores visible, no GPU; torch {torch.__version__} with "
        f"{torch.get_num_threads()} intra-op thread(s).",
        "",
        f"One RL update (set-up of the reference and AdamW, old and reference values, loss, backward, the first "
        f"AdamW step) of {result['sizes']}. Peak: tensor bytes above the base weights and the rollouts, from "
        "`torch.profiler` (`profile_memory=True`); the other rows are read from the tensors after the step. "
        "Both variants score the same reference values, bit for bit (checked).",
        "",
        "| | full fine-tuning | LoRA | LoRA / full |",
        "|---|---|---|---|",
        row("trainable parameters", full.trainable, lora.trainable, "count"),
        row("parameters held (policy; LoRA: base + adapters)", full.total, lora.total, "count"),
        row("reference weights beyond the policy's (MiB)", full.reference, lora.reference),
        row("gradients (MiB)", full.grads, lora.grads),
        row("AdamW state (MiB)", full.optimiser_state, lora.optimiser_state),
        row("reference + gradients + AdamW state (MiB)", full.weight_side, lora.weight_side),
        row("**peak of the update (MiB)**", full.peak, lora.peak),
        "",
        f"CPU time of the profiled update: {full.cpu_s:.2f} s full, {lora.cpu_s:.2f} s LoRA (with peft's "
        "wrapping of the base, once per run). What remains of "
        "LoRA's peak is the activations kept for backward: they scale with rollouts x scored states x "
        "tokens, not with the weights (gradient checkpointing and smaller mini-batches cut that part).",
        END,
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=64, help="state tokens L (default 64)")
    ap.add_argument("--prompt-len", type=int, default=16)
    ap.add_argument("--vocab", type=int, default=32)
    ap.add_argument("--batch", type=int, default=8, help="rollouts in the update (default 8)")
    ap.add_argument("--group", type=int, default=4)
    ap.add_argument("--steps", type=int, default=4, help="sampler steps of the rollouts")
    ap.add_argument("--units", type=int, default=2, help="scored states per rollout (ForwardReconstruction)")
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--quick", action="store_true", help="small sizes; prints only")
    ap.add_argument("--write", action="store_true", help="with --quick: write the block anyway")
    args = ap.parse_args(argv)
    if args.quick:
        args.layers, args.hidden, args.heads, args.seq_len, args.batch, args.group = 2, 64, 2, 16, 4, 2
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))  # the machine is shared
    result = run(args)
    argv_text = " ".join(argv) if argv else ""
    text = render(result, f"python benchmarks/lora_memory.py {argv_text}".strip())
    print(text)
    if not args.quick or args.write:
        write_block(DOC, BEGIN, END, text)
    return result


if __name__ == "__main__":
    main()
