"""Rollout throughput on DiffusionGemma: dflow's ``BlockSampler`` recording exact log-probs against the
model's own ``generate`` without them, same model, prompts, canvas and steps, measured in one run.

Both sample ``blocks`` canvases of ``canvas`` tokens after a ``prompt``-token prompt, ``steps`` denoising
steps per canvas, with DiffusionGemma's entropy-bound sampler (``EntropyBoundKernel`` with the same
bound and temperature schedule); ``generate`` runs with adaptive stopping off, so both take every step.
dflow also records what RL needs: each step's state, the sampled canvas, and the step's exact
log-probability (float32), and it ends each block on the argmax canvas as ``generate`` does.

**What is measured.** CPU time (``time.process_time``) of each call, the two interleaved ``repeats``
times after one warm-up each; the median of each, and ``ratio = generate / dflow`` (above 1: dflow is
faster). Where the time goes: the share spent inside the network (the encoder, the decoder and the
output head, timed with forward hooks) and the rest (softmax over the vocabulary, sampling, the
entropy sort, log-probs, bookkeeping).

Usage::

    python benchmarks/block_rollout_speed.py             # default sizes; writes its block into docs/benchmarks.md
    python benchmarks/block_rollout_speed.py --quick     # tiny sizes; prints only (add --write to write)
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import torch
from transformers import DiffusionGemmaConfig, DiffusionGemmaForBlockDiffusion
from transformers.models.diffusion_gemma.generation_diffusion_gemma import EntropyBoundSamplerConfig

from dflow.lightning.block_builders import TINY_VISION
from dflow.models import DiffusionGemmaDenoiser
from dflow.paths import MixturePath, UniformSource
from dflow.sampling import BlockSampler, EntropyBoundKernel

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/common.py
from common import write_block  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "benchmarks.md"
BEGIN, END = "<!-- block_rollout_speed:begin -->", "<!-- block_rollout_speed:end -->"


def build(args: argparse.Namespace) -> DiffusionGemmaForBlockDiffusion:
    """A small random DiffusionGemma (text tower sized by ``args``, the recipe builder's vision stub)."""
    V = args.vocab
    text = dict(
        vocab_size=V,
        hidden_size=args.hidden,
        intermediate_size=2 * args.hidden,
        num_hidden_layers=args.layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=args.hidden // 4,
        global_head_dim=args.hidden // 4,
        sliding_window=args.canvas * 2,
        max_position_embeddings=args.prompt + args.blocks * args.canvas + 8,
        num_experts=4,
        top_k_experts=2,
        moe_intermediate_size=args.hidden,
        layer_types=["sliding_attention", "full_attention"] * (args.layers // 2),
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
    )
    config = DiffusionGemmaConfig(
        text_config=text,
        vision_config=TINY_VISION,  # the recipe builder's one-layer stub
        canvas_length=args.canvas,
        boi_token_id=V - 3,
        eoi_token_id=V - 2,
        image_token_id=V - 1,
    )
    torch.manual_seed(0)
    return DiffusionGemmaForBlockDiffusion(config).eval()


@contextmanager
def network_time(model: torch.nn.Module, box: list[float], calls: dict[str, int] | None = None):
    """Add the CPU time spent inside the network (encoder, decoder and output head) to ``box[0]``, and
    count the calls of each into ``calls``."""
    starts: list[float] = []
    handles = []
    calls = calls if calls is not None else {}
    for name, module in (("encoder", model.model.encoder), ("decoder", model.model.decoder), ("head", model.lm_head)):

        def pre(*_, name=name):
            calls[name] = calls.get(name, 0) + 1
            starts.append(time.process_time())

        handles.append(module.register_forward_pre_hook(pre))
        handles.append(
            module.register_forward_hook(lambda *_: box.__setitem__(0, box[0] + time.process_time() - starts.pop()))
        )
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def run(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    model = build(args)
    policy = DiffusionGemmaDenoiser(model)
    V = args.vocab
    prompts = torch.randint(3, V - 3, (args.batch, args.prompt), generator=torch.Generator().manual_seed(0))
    kernel = EntropyBoundKernel(entropy_bound=args.bound, t_min=0.4, t_max=0.8, final_step="argmax")
    sampler = BlockSampler(MixturePath(UniformSource(V)), kernel, block_len=args.canvas, steps_per_block=args.steps)
    config = EntropyBoundSamplerConfig(entropy_bound=args.bound)
    seq_len = args.blocks * args.canvas

    def dflow_rollout() -> None:
        with torch.no_grad():
            sampler.rollout(
                policy, prompts, batch_size=args.batch, seq_len=seq_len, generator=torch.Generator().manual_seed(1)
            )

    def hf_generate() -> None:
        with torch.no_grad():
            model.generate(
                prompts,
                max_denoising_steps=args.steps,
                max_new_tokens=seq_len,
                sampler_config=config,
                stability_threshold=None,
                confidence_threshold=None,
                t_min=0.4,
                t_max=0.8,
            )

    timings: dict[str, list[float]] = {"dflow": [], "generate": []}
    inside: dict[str, list[float]] = {"dflow": [], "generate": []}
    calls: dict[str, dict[str, int]] = {"dflow": {}, "generate": {}}
    for name, fn in (("dflow", dflow_rollout), ("generate", hf_generate)):  # warm-up; counts the network calls
        with network_time(model, [0.0], calls[name]):
            fn()
    for _ in range(args.repeats):
        for name, fn in (("dflow", dflow_rollout), ("generate", hf_generate)):
            box = [0.0]
            with network_time(model, box):
                tic = time.process_time()
                fn()
                total = time.process_time() - tic
            timings[name].append(total)
            inside[name].append(box[0] / total)
    med = {k: statistics.median(v) for k, v in timings.items()}
    return {
        "sizes": (
            f"random DiffusionGemma, text tower {args.layers} layers x hidden {args.hidden}, 4 experts (top 2), "
            f"V={V:,}; batch {args.batch}, prompt {args.prompt} tokens, {args.blocks} canvases of {args.canvas}, "
            f"{args.steps} steps per canvas, entropy bound {args.bound}, temperatures 0.8 -> 0.4, float32"
        ),
        "median_s": med,
        "ratio": med["generate"] / med["dflow"],
        "network_share": {k: statistics.median(v) for k, v in inside.items()},
        "calls": calls,
        "repeats": args.repeats,
        "threads": torch.get_num_threads(),
    }


def render(result: dict, command: str) -> str:
    med, share = result["median_s"], result["network_share"]
    lines = [
        BEGIN,
        "## Block rollouts on DiffusionGemma: dflow against `generate` (`benchmarks/block_rollout_speed.py`)",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores visible, no GPU; torch {torch.__version__} "
        f"with {result['threads']} intra-op thread(s).",
        "",
        f"{result['sizes']}. CPU time per rollout, median of {result['repeats']} interleaved runs after a warm-up; "
        "the network share is the time inside the encoder, decoder and output-head forward passes.",
        "",
        "| | CPU s per rollout | inside the network | elsewhere |",
        "|---|---|---|---|",
        f"| `model.generate` (adaptive stopping off, no log-probs) | {med['generate']:.3f} | "
        f"{share['generate']:.0%} | {1 - share['generate']:.0%} |",
        f"| dflow `BlockSampler` + `EntropyBoundKernel`, recording states and exact log-probs | {med['dflow']:.3f} | "
        f"{share['dflow']:.0%} | {1 - share['dflow']:.0%} |",
        "",
        f"**Ratio generate / dflow: {result['ratio']:.2f}** (target >= 1.0: recording log-probs costs no throughput). "
        f"Network calls per rollout: dflow {result['calls']['dflow']}, generate {result['calls']['generate']}.",
        END,
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, print only")
    parser.add_argument("--write", action="store_true", help="with --quick: write the block anyway")
    parser.add_argument("--vocab", type=int, default=4096)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--prompt", type=int, default=16)
    parser.add_argument("--canvas", type=int, default=16)
    parser.add_argument("--blocks", type=int, default=2)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--bound", type=float, default=0.5)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1")))
    args = parser.parse_args(argv)
    if args.quick:
        args.vocab, args.hidden, args.layers, args.batch = 64, 16, 2, 4
        args.prompt, args.canvas, args.steps, args.repeats = 3, 4, 2, 2
    result = run(args)
    command = "python benchmarks/block_rollout_speed.py" + (" --quick" if args.quick else "")
    text = render(result, command)
    print(text)
    if not args.quick or args.write:
        write_block(DOC, BEGIN, END, text)
    return result


if __name__ == "__main__":
    main()
