"""How much coupled-GRPO's complementary pairs lower the variance of the ELBO estimate, at equal passes.

On the shapes bases (mask and uniform source), for ``N`` samples of the base's own rollouts: the
``CoupledELBOLikelihood`` unit of each sample is drawn ``R`` times with complementary pairs
(``coupled=True``) and ``R`` times with two independent draws (``coupled=False``); both cost two
denoiser passes per sample and estimate the same quantity (the ELBO integrand averaged over noise
levels in ``[noise_min, noise_max]``). Reported: the mean over samples of the per-sample variance
over draws, their ratio, the median of the per-sample ratios, and both means (which must agree
within their standard errors: the coupling must not bias the estimate).

Usage::

    python benchmarks/coupled_variance.py                 # N = 16 samples, R = 200 draws each
    python benchmarks/coupled_variance.py --samples 8 --draws 50
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dflow.lightning.builders import PretrainedDenoiser  # noqa: E402
from dflow.paths import MixturePath  # noqa: E402
from dflow.paths.sources import MaskSource, UniformSource  # noqa: E402
from dflow.rl import CoupledELBOLikelihood  # noqa: E402
from dflow.sampling import Sampler  # noqa: E402
from dflow.tasks import ShapesTask  # noqa: E402

BASES = {"mask": ("dflow/assets/shapes_mask", MaskSource), "uniform": ("dflow/assets/shapes_uniform", UniformSource)}


@torch.no_grad()
def measure(source_name: str, samples: int, draws: int, noise_min: float, seed: int) -> dict[str, float]:
    base, source_cls = BASES[source_name]
    task = ShapesTask()
    path = MixturePath(source_cls(task.vocab_size))
    policy = PretrainedDenoiser(str(ROOT / base)).build(task, path).eval()
    sampler = Sampler(path, num_steps=10)
    prompts = task.prompts("rl")[:samples]
    traj = sampler.rollout(
        policy,
        task.encode_prompts(prompts),
        batch_size=samples,
        seq_len=task.seq_len,
        generator=torch.Generator().manual_seed(seed),
    )
    out: dict[str, float] = {}
    units = {}
    for coupled in (True, False):
        est = CoupledELBOLikelihood(noise_min=noise_min, noise_max=1.0 - noise_min, coupled=coupled)
        gen = torch.Generator().manual_seed(seed + 1)
        values = [est.log_probs(policy, traj, est.plan(traj, sampler, gen), sampler)[:, 0] for _ in range(draws)]
        units[coupled] = torch.stack(values).double()  # [R, N]
    var_c, var_i = units[True].var(0), units[False].var(0)  # [N] per-sample variance over draws
    out["var_coupled"], out["var_independent"] = var_c.mean().item(), var_i.mean().item()
    out["ratio"] = out["var_independent"] / out["var_coupled"]
    out["median_ratio"] = (var_i / var_c).median().item()
    out["mean_coupled"], out["mean_independent"] = units[True].mean().item(), units[False].mean().item()
    # standard error of the difference of the two grand means (draws and samples independent)
    se = ((var_c.mean() + var_i.mean()) / (draws * samples)).sqrt().item()
    out["mean_gap_in_se"] = abs(out["mean_coupled"] - out["mean_independent"]) / se
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--draws", type=int, default=200)
    parser.add_argument("--noise-min", type=float, default=0.2, help="DiffuCoder: mask ratio in [0.2, 0.8]")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(f"N = {args.samples} samples, R = {args.draws} draws, noise levels [{args.noise_min}, {1 - args.noise_min}]")
    print("| source | var coupled | var independent | ratio | median per-sample ratio | means (coupled / indep.) |")
    print("|---|---|---|---|---|---|")
    for name in BASES:
        start = time.perf_counter()
        r = measure(name, args.samples, args.draws, args.noise_min, args.seed)
        print(
            f"| {name} | {r['var_coupled']:.4g} | {r['var_independent']:.4g} | {r['ratio']:.2f}x | "
            f"{r['median_ratio']:.2f}x | {r['mean_coupled']:.2f} / {r['mean_independent']:.2f} "
            f"({r['mean_gap_in_se']:.1f} se apart) |  [{time.perf_counter() - start:.0f} s]"
        )


if __name__ == "__main__":
    main()
