"""Peak memory of one RL update: today's old path against LoRA, gradient checkpointing, chunked log-probs
and all three, at two vocabularies and two sequence lengths, measured in one run (issue 15).

One RL update, as ``RLModule`` runs it (the same steps as ``benchmarks/lora_memory.py``): set up the policy
(LoRA: wrap the base in adapters), the KL reference (full: a frozen deep copy of the policy; LoRA: the same
network with the adapters off) and AdamW over the trainable parameters; ``PolicyUpdate.prepare`` (reference
values, no gradient); one mini-batch loss (UDM-GRPO: ``ForwardReconstruction`` units, clipped surrogate, k3
KL); backward; the first optimiser step. Every variant starts from the same base weights and scores the same
rollouts with the same scored states. Five variants:

- **baseline**, the old path: full fine-tuning, deep-copy reference, no checkpointing, unchunked log-probs;
- **LoRA**, **checkpointing**, **chunked**: the old path with one feature switched on;
- **all three**.

**Chunked log-probs** are the library's scoring: ``DFlowTransformer`` gives its last hidden state and head
(``dflow.logprobs.HeadLogits``) and ``log_softmax_gather`` makes each chunk's logits from them under activation
checkpointing, so no unit's logits outlive one chunk. **Unchunked** (the old path): :func:`unchunked_log_probs`
switches the fused head off (``set_fused_head(False)``: the denoiser's full logits) and swaps, for the duration of
the variant, the name ``log_softmax_gather`` in every module that imports it (:data:`SCORING_MODULES`) for
:func:`full_log_softmax_gather`: one float32 ``log_softmax`` over the whole ``[B, L, V]``, then a gather (the
code before chunking). Both are restored when the variant ends, also on an error. The variants' values
are checked against each other: reference values and policy log-probs to float tolerance (chunked against
unchunked), gradients by their norm per parameter, within the same trainable set.

**What is measured.** As in the other memory benchmarks: the peak of the bytes held by CPU tensors allocated
during the update, above what existed before it (the base weights and the rollouts are not counted), from
``torch.profiler``'s allocator events (``common.cpu_peak``): the tensors' own accounting, not resident memory.

**The log-prob part** of the peak is measured alone (:func:`logprob_part`): the scoring of the update's ``U``
units of logits ``[B, L, V]``, forward for every unit, then one backward, from a head (a ``[V, 16]`` weight) applied
inside the measured pass to a hidden state of width 16, three ways: the full float32 log-softmax of the logits
(old), the chunked op on the logits (what dflow does for a denoiser without ``head_logits``), and the head fused
into the chunks (``HeadLogits``, what it does for ``DFlowTransformer``). It is measured in float32 (this CPU's
model dtype) and in bfloat16 (a bf16 model's logits). Beside it the in-update difference: baseline peak less the
chunked variant's peak.

**Estimate** (``--estimate``): per-GPU memory of an RL update of two large models, from their parameter
counts and per-token costs measured here (:func:`measure_costs`); arithmetic, not a measurement (see
:func:`estimate`).

Usage::

    python benchmarks/rl_update_memory.py             # grid + estimate; writes docs/benchmarks.md and docs/scaling.md
    python benchmarks/rl_update_memory.py --quick     # tiny sizes; prints only (add --write to write)
    python benchmarks/rl_update_memory.py --estimate  # the estimate table only (prints it)
"""

from __future__ import annotations

import argparse
import copy
import importlib
import os
import platform
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

import dflow.logprobs
from dflow.logprobs import (
    CHUNK_ELEMENTS,
    HeadLogits,
    compute_dtype,
    log_softmax_gather,
    set_chunk_elements,
    set_fused_head,
)
from dflow.models import DFlowConfig, DFlowTransformer, enable_gradient_checkpointing
from dflow.models.lora import AdaptersOff, LoRAConfig, apply_lora
from dflow.paths import MixturePath, UniformSource
from dflow.rl import ClippedSurrogate, Compute, ForwardReconstruction, GroupAdvantage, KLPenalty, PolicyUpdate
from dflow.rl.advantages import AdvantageInput
from dflow.sampling import Sampler

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/common.py
from common import cpu_peak, write_block  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "benchmarks.md"
SCALING = ROOT / "docs" / "scaling.md"
BEGIN, END = "<!-- rl_update_memory:begin -->", "<!-- rl_update_memory:end -->"
EST_BEGIN, EST_END = "<!-- rl_update_memory_estimate:begin -->", "<!-- rl_update_memory_estimate:end -->"
MIB, GIB = 2**20, 2**30

# every module that imports the chunked op by name (checked: each must hold the library's function)
SCORING_MODULES = (
    "dflow.paths.mixture",
    "dflow.rl.likelihood.base",
    "dflow.sampling.kernels",
    "dflow.lightning.losses",
)


# ---------------------------------------------------------------------------------------------- old path
def full_log_softmax_gather(logits: Tensor, index: Tensor, *, chunk_size: int | None = None) -> Tensor:
    """The scoring before chunking: ``log_softmax`` over the whole ``[..., V]`` in float32, then gather.

    Same signature and value as :func:`dflow.logprobs.log_softmax_gather` (``chunk_size`` is ignored); autograd
    keeps the float32 ``[..., V]`` log-softmax for backward."""
    return torch.log_softmax(logits.to(compute_dtype(logits.dtype)), dim=-1).gather(-1, index.long())


@contextmanager
def unchunked_log_probs() -> Iterator[None]:
    """Within the block, denoisers give their full logits and every module in :data:`SCORING_MODULES` scores
    them with :func:`full_log_softmax_gather`."""
    modules = [importlib.import_module(name) for name in SCORING_MODULES]
    for module in modules:
        if getattr(module, "log_softmax_gather", None) is not log_softmax_gather:
            raise RuntimeError(f"{module.__name__} no longer imports log_softmax_gather: update SCORING_MODULES")
    fused = set_fused_head(False)
    try:
        for module in modules:
            module.log_softmax_gather = full_log_softmax_gather  # type: ignore[attr-defined]
        yield
    finally:
        set_fused_head(fused)
        for module in modules:
            module.log_softmax_gather = log_softmax_gather  # type: ignore[attr-defined]


# ---------------------------------------------------------------------------------------------- the update
@dataclass(frozen=True)
class Variant:
    lora: bool
    checkpointing: bool
    chunked: bool


VARIANTS = {
    "baseline": Variant(lora=False, checkpointing=False, chunked=False),
    "LoRA": Variant(lora=True, checkpointing=False, chunked=False),
    "checkpointing": Variant(lora=False, checkpointing=True, chunked=False),
    "chunked": Variant(lora=False, checkpointing=False, chunked=True),
    "all three": Variant(lora=True, checkpointing=True, chunked=True),
}


@dataclass
class Update:
    """One variant's update: the profiled peak and the values it computed (to compare variants)."""

    peak: int  # bytes, above the base weights and the rollouts
    ref_logp: Tensor  # the reference's units [B, U]
    logp_mean: float  # mean of the policy's units (with gradient)
    grad_norms: dict[str, float]  # per trainable parameter, after backward
    cpu_s: float


def build_base(args: argparse.Namespace, vocab: int, seq_len: int) -> DFlowTransformer:
    torch.manual_seed(0)
    config = DFlowConfig(
        vocab_size=vocab,
        mask_id=None,
        seq_len=seq_len,
        prompt_len=args.prompt_len,
        prompt_vocab_size=64,
        hidden_size=args.hidden,
        num_layers=args.layers,
        num_heads=args.heads,
        time_conditioning=True,
    )
    return DFlowTransformer(config).to(args.dtype).eval()


def rollouts(args: argparse.Namespace, vocab: int, seq_len: int):
    """The rollout batch every variant scores: ``batch / group`` prompts x ``group`` rollouts of the base."""
    sampler = Sampler(MixturePath(UniformSource(vocab)), num_steps=args.steps)
    gen = torch.Generator().manual_seed(1)
    cond = torch.randint(1, 64, (args.batch // args.group, args.prompt_len), generator=gen)
    cond = cond.repeat_interleave(args.group, dim=0)  # [B, Lc]
    traj = sampler.rollout(
        build_base(args, vocab, seq_len), cond, batch_size=args.batch, seq_len=seq_len, generator=gen
    )
    advantages = GroupAdvantage()(AdvantageInput(torch.rand(args.batch, generator=gen), args.group))
    return sampler, traj, advantages


def one_update(args: argparse.Namespace, variant: Variant, vocab: int, seq_len: int, sampler, traj, advantages):
    base = build_base(args, vocab, seq_len)  # seed 0: the same weights for every variant; not counted
    if variant.checkpointing:
        enable_gradient_checkpointing(base)  # before the wrap, as the recipe builder does
    lora = LoRAConfig(rank=args.rank, alpha=2.0 * args.rank) if variant.lora else None
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
        gen = torch.Generator().manual_seed(2)  # the same scored states in every variant
        batch = update.prepare(policy, reference, traj, advantages, sampler, args.group, Compute(), gen)
        out = update.loss(policy, batch, torch.arange(args.batch), sampler, Compute())
        out.loss.backward()
        optimiser.step()
        held.update(policy=policy, ref_logp=batch.ref_logp, logp_mean=out.stats["logp_mean"])

    tic = time.process_time()
    with nullcontext() if variant.chunked else unchunked_log_probs():
        peak = cpu_peak(step)
    seconds = time.process_time() - tic
    norms = {n: p.grad.float().norm().item() for n, p in held["policy"].named_parameters() if p.grad is not None}
    return Update(peak, held["ref_logp"], held["logp_mean"], norms, seconds)


def check_agreement(updates: dict[str, Update], rtol: float) -> dict[str, float]:
    """Largest relative differences between variants; ``RuntimeError`` beyond ``rtol``.

    Reference values: every variant against the baseline (LoRA's reference is the base with adapters off, the
    full variants' a deep copy: the same model). Policy log-probs: likewise (the adapters start at zero).
    Gradient norms: within the same trainable set (full: baseline, checkpointing, chunked; LoRA: LoRA, all three).
    """
    base = updates["baseline"]
    ref = max(
        (u.ref_logp - base.ref_logp).abs().max().item() / base.ref_logp.abs().max().item() for u in updates.values()
    )
    logp = max(abs(u.logp_mean - base.logp_mean) / abs(base.logp_mean) for u in updates.values())

    def grads(a: str, b: str) -> float:
        ga, gb = updates[a].grad_norms, updates[b].grad_norms
        if ga.keys() != gb.keys():
            raise RuntimeError(f"{a} and {b} train different parameters")
        return max(abs(ga[n] - gb[n]) / max(ga[n], 1e-30) for n in ga)

    grad = max(grads("baseline", "checkpointing"), grads("baseline", "chunked"), grads("LoRA", "all three"))
    diffs = {"ref_logp": ref, "logp_mean": logp, "grad_norm": grad}
    for name, value in diffs.items():
        if not value <= rtol:
            raise RuntimeError(f"the variants disagree: largest relative difference of {name} is {value:.2e} > {rtol}")
    return diffs


# ---------------------------------------------------------------------------------------------- log-prob part
SCORINGS = ("full", "chunked", "fused")  # logprob_part's three ways to score
PART_WIDTH = 16  # the hidden width of logprob_part's head: small, so the head's matmul costs little


def logprob_part(B: int, L: int, V: int, units: int, dtype: torch.dtype, scoring: str) -> int:
    """Peak bytes of scoring ``units`` logits ``[B, L, V]`` of ``dtype`` (forward for all, then one backward).

    Each unit's logits are ``h @ W.T`` with ``h = noise + a[..., None]`` ``[B, L, 16]`` (leaf ``a [B, L]``) and a
    head weight ``W [V, 16]`` with a gradient: the head's matmul keeps only its input and weight for backward,
    so the logits live as long as the scoring keeps them. ``noise`` and ``W`` exist before the pass and are not
    counted (``W``'s gradient is). ``scoring``: ``"full"`` (a float32 log-softmax of the logits, the old path),
    ``"chunked"`` (:func:`dflow.logprobs.log_softmax_gather` on the logits) or ``"fused"`` (on
    :class:`~dflow.logprobs.HeadLogits`: the logits made a chunk of tokens at a time). The score is the
    update's: the per-unit mean over tokens of ``log p(x_1)``."""
    if scoring not in SCORINGS:
        raise ValueError(f"logprob_part: scoring must be one of {SCORINGS}, got {scoring!r}")
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(B, L, PART_WIDTH, generator=g).to(dtype)  # [B, L, 16], not counted
    weight = (0.3 * torch.randn(V, PART_WIDTH, generator=g)).to(dtype).requires_grad_(True)  # [V, 16]
    a = torch.zeros(B, L, dtype=dtype, requires_grad=True)  # [B, L]
    target = torch.randint(0, V, (B, L, 1), generator=g)  # [B, L, 1]

    def head(h: Tensor) -> Tensor:
        return h @ weight.T  # [..., V]

    def unit() -> Tensor:
        h = noise + a[..., None]  # [B, L, 16]
        if scoring == "fused":
            return log_softmax_gather(HeadLogits(h, head, V), target).mean(dim=(1, 2))  # [B]
        score = log_softmax_gather if scoring == "chunked" else full_log_softmax_gather
        return score(head(h), target).mean(dim=(1, 2))  # [B]; the logits freed here unless the scoring keeps them

    def step() -> None:
        torch.stack([unit() for _ in range(units)], dim=1).sum().backward()

    return cpu_peak(step)


# ---------------------------------------------------------------------------------------------- the grid
def run_cell(args: argparse.Namespace, vocab: int, seq_len: int) -> dict:
    sampler, traj, advantages = rollouts(args, vocab, seq_len)
    updates = {}
    for name, variant in VARIANTS.items():
        print(f"  V={vocab} L={seq_len} {name}", file=sys.stderr, flush=True)
        updates[name] = one_update(args, variant, vocab, seq_len, sampler, traj, advantages)
    diffs = check_agreement(updates, args.rtol)
    part = {}
    for dtype in (torch.float32, torch.bfloat16):
        for scoring in SCORINGS:
            part[(str(dtype).removeprefix("torch."), scoring)] = logprob_part(
                args.batch, seq_len, vocab, args.units, dtype, scoring
            )
    return {"V": vocab, "L": seq_len, "updates": updates, "diffs": diffs, "logprob": part}


def run(args: argparse.Namespace) -> dict:
    cells = [run_cell(args, V, L) for V in args.vocabs for L in args.lengths]
    return {
        "cells": cells,
        "units": args.units,
        "batch": args.batch,
        "sizes": (
            f"`DFlowTransformer`, {args.layers} layers, hidden {args.hidden}, {args.heads} heads, time-conditioned, "
            f"{str(args.dtype).removeprefix('torch.')}; rollouts of {args.batch} = {args.batch // args.group} "
            f"prompts x {args.group}, {args.prompt_len} prompt tokens + L state tokens, {args.steps} sampler "
            f"steps; UDM-GRPO with {args.units} scored states per rollout, one mini-batch, k3 KL 0.05; LoRA rank "
            f"{args.rank}, alpha {2 * args.rank} on qkv / out / up / down; chunked log-probs: the head fused into "
            f"chunks of {dflow.logprobs.CHUNK_ELEMENTS:,} float32 elements (3 per logit: logits, float32 copy, "
            "log-softmax)"
        ),
    }


def render(result: dict, command: str) -> str:
    cpu = platform.processor() or platform.machine()
    names = list(VARIANTS)
    lines = [
        BEGIN,
        "## One RL update: LoRA, checkpointing, chunked log-probs and all three (`benchmarks/rl_update_memory.py`)",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {cpu}, {os.cpu_count()} CPU cores visible, no GPU; torch {torch.__version__} with "
        f"{torch.get_num_threads()} intra-op thread(s).",
        "",
        f"One RL update (set-up of the reference and AdamW, reference values, loss, backward, the first AdamW step) "
        f"of {result['sizes']}. Baseline = the old path: full fine-tuning, deep-copy reference, no checkpointing, "
        "the denoiser's full logits and a float32 `log_softmax` over `[B, L, V]` then gather. "
        "Peak: tensor MiB above the base weights and the "
        "rollouts (`torch.profiler` allocator events); x = baseline peak / variant peak.",
        "",
        "| V | L | " + " | ".join(f"{n} MiB | x" for n in names) + " |",
        "|---|---|" + "---|---|" * len(names),
    ]
    for c in result["cells"]:
        base = c["updates"]["baseline"].peak
        cols = " | ".join(f"{c['updates'][n].peak / MIB:.0f} | {base / c['updates'][n].peak:.2f}" for n in names)
        lines.append(f"| {c['V']:,} | {c['L']} | {cols} |")
    lines += [
        "",
        f"**Log-prob part of the peak.** Measured alone: scoring the update's {result['units']} units of logits "
        f"`[{result['batch']}, L, V]` (forward for every unit, then one backward), made inside the pass by a head "
        f"of width {PART_WIDTH} (whose matmul keeps nothing of their size), so they live as long as the scoring "
        "keeps them; their gradient and the head weight's are counted. Three ways: full (a float32 log-softmax, "
        "the old path), chunked (the chunked op on the logits: a denoiser without `head_logits`) and fused (the "
        "head fused into the chunks: `DFlowTransformer`); x = full / that way. In float32 (the model's dtype "
        "here) and bfloat16 (a bf16 model's logits). In the update: baseline peak less the chunked variant's peak.",
        "",
        "| V | L | f32 full MiB | f32 chunked MiB | x | f32 fused MiB | x | bf16 full MiB | bf16 chunked MiB | x "
        "| bf16 fused MiB | x | in the update: baseline - chunked MiB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in result["cells"]:
        p = c["logprob"]
        cols = []
        for dtype in ("float32", "bfloat16"):
            full, ch, fu = (p[(dtype, s)] for s in SCORINGS)
            cols.append(f"{full / MIB:.0f} | {ch / MIB:.0f} | {full / ch:.1f} | {fu / MIB:.1f} | {full / fu:.0f}")
        removed = c["updates"]["baseline"].peak - c["updates"]["chunked"].peak
        lines.append(f"| {c['V']:,} | {c['L']} | {' | '.join(cols)} | {removed / MIB:.0f} |")
    worst = {k: max(c["diffs"][k] for c in result["cells"]) for k in result["cells"][0]["diffs"]}
    seconds = ", ".join(
        f"V = {c['V']:,}, L = {c['L']}: {sum(u.cpu_s for u in c['updates'].values()):.0f} s" for c in result["cells"]
    )
    lines += [
        "",
        "Values agree between the variants (checked; largest relative difference over the grid): reference values "
        f"{worst['ref_logp']:.1e}, mean policy log-prob {worst['logp_mean']:.1e}, gradient norm per parameter "
        f"{worst['grad_norm']:.1e} (full variants among themselves, LoRA variants among themselves). CPU time of "
        f"the five profiled updates per cell: {seconds}.",
        END,
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- estimate
@dataclass(frozen=True)
class ModelShape:
    """What the estimate needs of a model: parameter counts and the sizes activations scale with."""

    name: str
    layers: int
    hidden: int
    vocab: int
    total: float  # parameters
    active: float  # parameters a token passes through (MoE: routed experts only)
    lora: float  # adapter parameters at the estimate's rank
    largest_layer: float  # parameters of the largest block (gathered whole under FSDP)
    note: str


def _llada_8b(rank: int) -> ModelShape:
    D, F, n, V = 4096, 12288, 32, 126_464  # MHA (32 heads x 128), SwiGLU intermediate 12,288: assumed, LLaMA-style
    block = 4 * D * D + 3 * D * F  # q, k, v, o; gate, up, down
    total = n * block + 2 * V * D  # input embedding and an untied head
    adapters = n * rank * (4 * (D + D) + 2 * (D + F) + (F + D))
    return ModelShape(
        "8B masked dLLM", n, D, V, total, total, adapters, block, "32 x 4096, MHA, SwiGLU 12,288 (assumed), untied head"
    )


def _gemma_26b_a4b(rank: int) -> ModelShape:
    # Gemma 4 26B-A4B's text backbone as published in MaxText's configs/models/gemma4-26b.yml (not in the
    # installed transformers, whose DiffusionGemmaTextConfig defaults are a dense model): 30 layers, width 2816,
    # 16 query heads of 256 (global layers: 512, with 2 shared k = v heads), 8 kv heads, a dense GeGLU MLP of
    # 2112 beside 128 experts of 704 (8 routed per token), every 6th layer global, tied embeddings.
    D, n, V, E, k, F, Fe = 2816, 30, 262_144, 128, 8, 2112, 704
    local_attn = D * 16 * 256 * 2 + D * 8 * 256 * 2  # q, o; k, v
    global_attn = D * 16 * 512 * 2 + D * 2 * 512  # q, o; one k = v projection
    mlp, expert, router = 3 * D * F, 3 * D * Fe, D * E
    n_global = n // 6
    attn = (n - n_global) * local_attn + n_global * global_attn
    total = attn + n * (mlp + E * expert + router) + V * D
    active = attn + n * (mlp + k * expert + router) + V * D
    local_adapters = 2 * (D + 16 * 256) + 2 * (D + 8 * 256)
    global_adapters = 2 * (D + 16 * 512) + (D + 2 * 512)
    adapters = rank * ((n - n_global) * local_adapters + n_global * global_adapters + n * (2 * (D + F) + (F + D)))
    largest = global_attn + mlp + E * expert + router
    note = "30 x 2816, 128 experts of 704 (8 routed) + dense 2112; LoRA on attention and the dense MLP"
    return ModelShape("DiffusionGemma 26B-A4B", n, D, V, total, active, adapters, largest, note)


def _transformers_default(rank: int) -> ModelShape:
    """``DiffusionGemmaTextConfig()`` of the installed transformers (its defaults are dense)."""
    from transformers import DiffusionGemmaTextConfig

    c = DiffusionGemmaTextConfig()
    D, n, V, F = c.hidden_size, c.num_hidden_layers, c.vocab_size, c.intermediate_size
    total = adapters = largest = 0.0
    for i in range(n):
        layer = c.per_layer_config[i]  # the global layers have their own head_dim
        q, kv = layer.num_attention_heads * layer.head_dim, layer.num_key_value_heads * layer.head_dim
        block = D * q * 2 + D * kv * 2 + 3 * D * F
        total += block
        largest = max(largest, block)
        adapters += rank * (2 * (D + q) + 2 * (D + kv) + 2 * (D + F) + (F + D))
    total += V * D  # tied embeddings
    note = f"{n} x {D}, dense MLP {F}, no experts (num_experts={c.num_experts})"
    return ModelShape("transformers' default DiffusionGemmaTextConfig", n, D, V, total, total, adapters, largest, note)


@dataclass(frozen=True)
class Costs:
    """Per-token costs measured on this machine (:func:`measure_costs`)."""

    act_per_layer: float  # activation values kept for backward per token per layer, in units of D (no checkpointing)
    logit_kept: dict[str, float]  # bf16 logits: bytes per logit each scored unit keeps until backward (by scoring)
    logit_transient: dict[str, float]  # bytes per logit of the last unit's forward and backward beyond what it keeps
    logit_fixed: dict[str, float]  # bytes that do not grow with the logits (the chunks)


def measure_costs(hidden: int = 256, tokens: int = 256, batch: int = 2, vocab: int = 65_536) -> Costs:
    """Activation values per token per layer (saved-tensor hooks on 1- and 2-layer models, the difference), and
    bf16 logit bytes per logit (:func:`logprob_part` at ``[1, 512 | 1024, vocab]``, 1 and 2 units: the slope in
    units is what each unit keeps until backward, the slope in length the rest of one unit's cost)."""
    saved = []
    for layers in (1, 2):
        torch.manual_seed(0)
        config = DFlowConfig(
            vocab_size=32, mask_id=None, seq_len=tokens, prompt_len=0, hidden_size=hidden, num_layers=layers,
            num_heads=4, time_conditioning=True,
        )  # fmt: skip
        model = DFlowTransformer(config).eval()
        x_t, t = torch.randint(0, 32, (batch, tokens)), torch.rand(batch)
        storages: dict[int, int] = {}

        def pack(x: Tensor, storages: dict[int, int] = storages) -> Tensor:
            storages[x.untyped_storage().data_ptr()] = x.untyped_storage().nbytes()
            return x

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
            model(x_t, t).sum()
        params = {p.untyped_storage().data_ptr() for p in model.parameters()}
        saved.append(sum(n for ptr, n in storages.items() if ptr not in params))
    act = (saved[1] - saved[0]) / (batch * tokens * hidden * 4)  # float32 values, in units of D
    kept, transient, fixed = {}, {}, {}
    short, long = 512, 1024
    for scoring in SCORINGS:
        one_short, one_long, two_short = (
            logprob_part(1, length, vocab, units, torch.bfloat16, scoring)
            for length, units in ((short, 1), (long, 1), (short, 2))
        )
        kept[scoring] = (two_short - one_short) / (short * vocab)
        per_unit = (one_long - one_short) / ((long - short) * vocab)
        transient[scoring] = per_unit - kept[scoring]
        fixed[scoring] = one_short - per_unit * short * vocab
    return Costs(act, kept, transient, fixed)


def estimate(costs: Costs, rank: int = 16, seq_len: int = 512, steps: int = 64, rollouts: int = 16, units: int = 2):
    """Rows ``(model, method, gpus, {part: bytes})`` per GPU for one RL update; see :func:`render_estimate`."""
    rows = []
    for shape in (_llada_8b(rank), _gemma_26b_a4b(rank), _transformers_default(rank)):
        for method in ("LoRA", "full"):
            for gpus in (1, 8):
                per_gpu = rollouts / gpus  # data parallel: the rollouts split over the GPUs
                if method == "full":  # bf16 weights + bf16 grads + fp32 AdamW m, v + bf16 reference copy
                    weights = shape.total * (2 + 2 + 8 + 2) / gpus
                else:  # frozen bf16 base (also the reference) + adapters: bf16 weights, grads, fp32 m, v
                    weights = (shape.total * 2 + shape.lora * (2 + 2 + 8)) / gpus
                gather = 2 * shape.largest_layer * 2 if gpus > 1 else 0.0  # FSDP: this block and the prefetched next
                tok = per_gpu * units * seq_len  # tokens of every scored pass, alive until backward
                act_plain = costs.act_per_layer * shape.hidden * 2 * shape.layers * tok
                # checkpointing: one bf16 hidden state per layer and token, and one block of one unit recomputed
                act_ckpt = shape.hidden * 2 * shape.layers * tok + costs.act_per_layer * shape.hidden * 2 * tok / units
                logits = {
                    c: (costs.logit_kept[c] * tok + costs.logit_transient[c] * tok / units) * shape.vocab
                    + costs.logit_fixed[c]
                    for c in SCORINGS
                }
                parts = {
                    "weights": weights + gather,
                    "activations": act_ckpt,
                    "logits": logits["chunked"],  # these models' adapters have no head_logits yet
                    "logits fused": logits["fused"],
                    "old path": weights + gather + act_plain + logits["full"],
                }
                parts["total"] = parts["weights"] + parts["activations"] + parts["logits"]
                parts["total fused"] = parts["weights"] + parts["activations"] + parts["logits fused"]
                rows.append((shape, method, gpus, parts))
    return rows


def render_estimate(costs: Costs, rank: int = 16, seq_len: int = 512, steps: int = 64, rollouts: int = 16) -> str:
    units = 2
    rows = estimate(costs, rank, seq_len, steps, rollouts, units)
    shapes = []
    for shape, *_ in rows:
        if shape not in shapes:
            shapes.append(shape)
    lines = [
        EST_BEGIN,
        "### Estimate: memory per GPU of one RL update of a large model (`python benchmarks/rl_update_memory.py "
        "--estimate`)",
        "",
        f"**An estimate, not a measurement**: arithmetic from parameter counts and per-token costs measured on the "
        f"CPU with `DFlowTransformer` (no GPU run). Setting: L = {seq_len} tokens, {rollouts} rollouts of K = {steps} "
        f"steps, UDM-GRPO with {units} scored states per rollout, the {rollouts} rollouts in one mini-batch (split "
        "over the GPUs by data parallelism), bf16 weights and activations. K sets the rollout's time, not the "
        "update's memory: the rollout runs without gradient, one step's activations at a time.",
        "",
        "Models (parameters counted from the shapes; total / active per token):",
        "",
    ]
    for s in shapes:
        lines.append(
            f"- {s.name}: {s.total / 1e9:.2f}B / {s.active / 1e9:.2f}B, V = {s.vocab:,}; {s.note}; LoRA rank {rank}: "
            f"{s.lora / 1e6:.1f}M adapter parameters."
        )
    a = costs.act_per_layer
    lines += [
        "",
        "Arithmetic (bytes per GPU; P parameters, A adapter parameters, G GPUs, T = rollouts / G x "
        f"{units} x L scored tokens, D width, n layers, V vocabulary):",
        "",
        "- weights, full fine-tuning: P x (2 bf16 weights + 2 bf16 gradients + 8 fp32 AdamW moments + 2 bf16 "
        "reference copy) / G; LoRA: (2 P frozen base, which is also the reference, + 12 A) / G. On 8 GPUs "
        "(FSDP, every weight, gradient and optimiser state sharded 8 ways) plus two whole blocks gathered in bf16 "
        "(the one computed and the one prefetched). An fp32 master copy of the weights (`bf16-mixed`) would add 4 "
        "P / G.",
        f"- activations with checkpointing: T x n x D x 2 (one bf16 hidden state per layer and token) + one block "
        f"recomputed for one unit: {a:.1f} x D x 2 x T / {units}. Without checkpointing: {a:.1f} x D x 2 x T x n. "
        f"{a:.1f} values of width D per token per layer is measured (saved-tensor hooks, 1- and 2-layer "
        "`DFlowTransformer`, float32, halved for bf16); other blocks keep other amounts (SwiGLU, GQA, experts): "
        "read the activation column to about +-50%.",
        f"- logits (bf16), chunked from the logits (what the HF adapters and DiffusionGemma get today: they have "
        f"no `head_logits`): {costs.logit_kept['chunked']:.2f} bytes per logit that every scored unit keeps until "
        f"backward (x T x V) + {costs.logit_transient['chunked']:.2f} bytes per logit of the last unit's own "
        f"forward and backward (x T / {units} x V) + {costs.logit_fixed['chunked'] / MIB:.0f} MiB (the chunk); "
        f"with the head fused into the chunks (`DFlowTransformer` today; these models once their adapters give "
        f"`head_logits`): {costs.logit_kept['fused']:.3f} + {costs.logit_transient['fused']:.3f} bytes per logit + "
        f"{costs.logit_fixed['fused'] / MIB:.0f} MiB; unchunked (the old path): {costs.logit_kept['full']:.2f} + "
        f"{costs.logit_transient['full']:.2f} bytes per logit + {costs.logit_fixed['full'] / MIB:.0f} MiB. "
        "Measured: the log-prob part alone (as in the grid above) at V = 65,536, 512 and 1,024 tokens, 1 and 2 "
        "units.",
        "- old path: full fine-tuning or LoRA as in the row, without checkpointing and without chunking.",
        "",
        "| model | method | GPUs | weights, grads, AdamW (GiB) | activations (GiB) | logits, chunked (GiB) | "
        "**total (GiB)** | logits, fused head (GiB) | total, fused head (GiB) | old path (GiB) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for shape, method, gpus, p in rows:
        lines.append(
            f"| {shape.name} | {method} | {gpus} | {p['weights'] / GIB:.1f} | {p['activations'] / GIB:.1f} | "
            f"{p['logits'] / GIB:.1f} | **{p['total'] / GIB:.1f}** | {p['logits fused'] / GIB:.1f} | "
            f"{p['total fused'] / GIB:.1f} | {p['old path'] / GIB:.1f} |"
        )
    lines.append(EST_END)
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--vocabs", type=int, nargs="+", default=[8192, 65_536])
    ap.add_argument("--lengths", type=int, nargs="+", default=[256, 1024], help="state tokens L")
    ap.add_argument("--prompt-len", type=int, default=16)
    ap.add_argument("--batch", type=int, default=4, help="rollouts in the update (default 4)")
    ap.add_argument("--group", type=int, default=2)
    ap.add_argument("--steps", type=int, default=4, help="sampler steps of the rollouts")
    ap.add_argument("--units", type=int, default=2, help="scored states per rollout (ForwardReconstruction)")
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32", help="the model's dtype")
    ap.add_argument("--rtol", type=float, default=1e-4, help="largest relative difference allowed between variants")
    ap.add_argument("--chunk-elements", type=int, default=None, help="the chunked op's float32 elements per chunk")
    ap.add_argument("--quick", action="store_true", help="tiny sizes and a 4096-element chunk; prints only")
    ap.add_argument("--write", action="store_true", help="with --quick or --estimate: write the block(s) anyway")
    ap.add_argument("--estimate", action="store_true", help="only the estimate table (printed; --write writes it)")
    args = ap.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))  # the machine is shared
    if args.estimate:
        text = render_estimate(measure_costs())
        print(text)
        if args.write:
            write_block(SCALING, EST_BEGIN, EST_END, text)
        return {"estimate": text}
    if args.quick:
        args.layers, args.hidden, args.heads, args.prompt_len = 2, 64, 2, 4
        args.vocabs, args.lengths = [64, 1024], [16, 32]
        args.chunk_elements = args.chunk_elements or 4096  # several chunks even at these sizes
    args.dtype = getattr(torch, args.dtype)
    previous = set_chunk_elements(args.chunk_elements or CHUNK_ELEMENTS)
    try:
        result = run(args)
    finally:
        set_chunk_elements(previous)
    flags = sys.argv[1:] if argv is None else argv
    text = render(result, " ".join(["python benchmarks/rl_update_memory.py", *flags]))
    print(text)
    if args.quick and not args.write:
        return result
    estimate_text = render_estimate(measure_costs())
    print(estimate_text)
    write_block(DOC, BEGIN, END, text)
    write_block(SCALING, EST_BEGIN, EST_END, estimate_text)
    result["estimate"] = estimate_text
    return result


if __name__ == "__main__":
    main()
