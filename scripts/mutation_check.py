"""Plant known RL wiring bugs one at a time and check that the test suite fails on each.

A test earns trust by failing: each mutant below is a one-line bug that once passed every test (the
first four were found by an outside review) or that a fix of issue 13 removed. For every mutant the
script copies ``dflow/`` and ``tests/`` to a scratch folder, applies the edit there (the working tree
is never touched), runs the test files that should see it, and reports whether they failed.

Usage: python scripts/mutation_check.py [--only NAME ...] [--list]
Exit status 1 if a mutant survives (or the unmutated copy does not pass).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Mutant:
    name: str
    file: str  # relative to the repository root
    old: str  # must occur exactly once in the file
    new: str
    tests: tuple[str, ...]  # test files (or node ids) that must fail
    why: str


UPDATE_WIRING = "tests/rl/test_update_wiring.py"
RL_WIRING = "tests/lightning/test_rl_wiring.py"
LORA_RL = "tests/lightning/test_lora_rl.py"
DEFAULT_DTYPE = "tests/rl/test_default_dtype.py"
SPG = "tests/rl/test_spg.py"
COUPLED = "tests/rl/test_coupled.py"
WD1 = "tests/rl/test_wd1.py"
SPANS = "tests/rl/test_spans.py"

MUTANTS = (
    Mutant(
        "old-values-from-reference",
        "dflow/rl/update.py",
        "old = self._units(policy, traj, plan, sampler, chunks)",
        "old = self._units(reference if reference is not None else policy, traj, plan, sampler, chunks)",
        (UPDATE_WIRING, RL_WIRING),
        "the old policy's units scored with the frozen reference",
    ),
    Mutant(
        "kl-subtracted",
        "dflow/rl/update.py",
        "unit_loss = unit_loss + kl",
        "unit_loss = unit_loss - kl",
        (UPDATE_WIRING,),
        "the KL penalty subtracted instead of added",
    ),
    Mutant(
        "old-values-recomputed-each-update",
        "dflow/rl/update.py",
        "old = logp.detach() if batch.old_logp is None else batch.old_logp[index].to(logp)",
        "old = logp.detach()",
        (UPDATE_WIRING, RL_WIRING),
        "old values recomputed between inner updates instead of frozen",
    ),
    Mutant(
        "step-rewards-shifted",
        "dflow/lightning/rl_module.py",
        "traj.posterior_argmax[k].long().cpu()",
        "traj.posterior_argmax[min(k + 1, traj.num_steps - 1)].long().cpu()",
        (RL_WIRING,),
        "stepwise step rewards shifted by one step",
    ),
    Mutant(
        "step-advantages-shifted",
        "dflow/rl/update.py",
        "adv = self.likelihood.expand(adv[:, plan.steps], traj)",
        "adv = self.likelihood.expand(adv[:, [min(k + 1, adv.shape[1] - 1) for k in plan.steps]], traj)",
        ("tests/rl/test_update.py",),
        "a step's unit given the next step's advantage",
    ),
    Mutant(
        "cpu-generator",
        "dflow/lightning/rl_module.py",
        "return self.rng.on(self.device)",
        'return self.rng.on("cpu")',
        (RL_WIRING,),
        "the RL generator kept on the CPU whatever the module's device",
    ),
    Mutant(
        "plan-draw-on-default-device",
        "dflow/rl/likelihood/final_sample.py",
        "start = torch.randint(0, self.max_start + 1, (B, 1), generator=generator, device=draw_device(generator, dev))",
        "start = torch.randint(0, self.max_start + 1, (B, 1), generator=generator)",
        (RL_WIRING,),
        "a plan's draw on the default device (fails with a CUDA generator)",
    ),
    Mutant(
        "mc-draws-keyed-to-rows",
        "dflow/paths/metric.py",
        "u = _keyed_uniforms(self.mc_seed, x_t, x_s, t, s, n).to(cdf.dtype) * cdf[..., -1:]",
        "u = torch.rand(B, L, n, generator=torch.Generator(device=cdf.device).manual_seed(self.mc_seed), "
        "device=cdf.device, dtype=cdf.dtype) * cdf[..., -1:]",
        (UPDATE_WIRING, "tests/paths/test_metric_path.py"),
        "Monte-Carlo draws from one seed per call (row-keyed)",
    ),
    Mutant(
        "mc-unrestricted-draws",
        "dflow/paths/metric.py",
        "allowed = closer | stay[..., None]",
        "allowed = torch.ones_like(closer)",
        ("tests/paths/test_metric_path.py",),
        "Monte-Carlo draws that can give a zero estimate",
    ),
    Mutant(
        "decode-ignores-revealed-tokens",
        "dflow/sampling/sampler.py",
        "argmax[k] = torch.where(self.path.is_clean(x), x, logits.argmax(-1))",
        "argmax[k] = logits.argmax(-1)",
        (RL_WIRING,),
        "stepwise decodes that overwrite tokens a mask source already revealed",
    ),
    Mutant(
        "elbo-equal-grid-weights",
        "dflow/rl/likelihood/final_sample.py",
        "weights=weight[pick])",
        "weights=torch.ones_like(times))",
        ("tests/rl/test_likelihood.py",),
        "ELBO units weighted equally on a non-uniform grid",
    ),
    Mutant(
        "token-mean-over-all-tokens",
        "dflow/rl/likelihood/base.py",
        "count = scores.shape[-1] if mask is None else mask.sum(-1).clamp_min(1).to(total.dtype)",
        "count = scores.shape[-1]",
        ("tests/rl/test_likelihood.py",),
        "token_mean dividing by L, carry-over tokens included",
    ),
    Mutant(
        "per-token-units-summed",
        "dflow/rl/likelihood/base.py",
        "        if self.per_token:\n            return scores.flatten(1)  # [B, U * L]",
        "        if False:\n            return scores.flatten(1)  # [B, U * L]",
        (UPDATE_WIRING,),
        "diffu-GRPO's per-token units collapsed to one ratio per sequence",
    ),
    Mutant(
        "metric-path-ignores-weighted",
        "dflow/paths/metric.py",
        "            if weighted:\n                rows = rows * d_beta[b][:, None, None]",
        "            rows = rows * d_beta[b][:, None, None]",
        ("tests/rl/test_likelihood.py",),
        "ELBO 'uniform' weighting silently ignored by a path",
    ),
    Mutant(
        "per-token-mask-dropped",
        "dflow/rl/update.py",
        "mask = self.likelihood.unit_mask(traj, plan, sampler)",
        "mask = None",
        (UPDATE_WIRING,),
        "per-token units that count a mask source's carry-over tokens",
    ),
    Mutant(
        "per-token-advantages-misplaced",
        "dflow/rl/likelihood/base.py",
        "return values.repeat_interleave(traj.x1.shape[1], dim=1) if self.per_token else values",
        "return values.repeat(1, traj.x1.shape[1]) if self.per_token else values",
        (UPDATE_WIRING,),
        "a token given another step's advantage",
    ),
    Mutant(
        "float64-logp-not-rounded",
        "dflow/rl/update.py",
        "logp = self.likelihood.log_probs(policy, traj, plan, sampler).float()",
        "logp = self.likelihood.log_probs(policy, traj, plan, sampler)",
        (UPDATE_WIRING,),
        "a float64 policy's first ratio off 1 (old values are float32)",
    ),
    Mutant(
        "mc-distance-transposed",
        "dflow/paths/metric.py",
        "closer = D[x_s] < D[x_t]",
        "closer = D.T[x_s] < D.T[x_t]",
        ("tests/paths/test_metric_path.py",),
        "Monte-Carlo draws restricted with the distance read transposed",
    ),
    Mutant(
        "keyed-draws-ignore-position",
        "dflow/paths/metric.py",
        "pos = torch.arange(L, device=x_t.device)[:, None] * n + torch.arange(n, device=x_t.device)",
        "pos = torch.zeros(L, 1, dtype=torch.long, device=x_t.device) + torch.arange(n, device=x_t.device)",
        ("tests/paths/test_metric_path.py",),
        "every position of a row drawing the same Monte-Carlo values",
    ),
    Mutant(
        "last-resumes-the-oldest-run",
        "dflow/lightning/runs.py",
        "for number, last in sorted(found, reverse=True):",
        "for number, last in sorted(found):",
        ("tests/lightning/test_run_folders.py",),
        "`--ckpt_path last` continuing an older run of the configuration",
    ),
    Mutant(
        "last-resumes-another-configuration",
        "dflow/lightning/runs.py",
        "if stored is not None and same_run(stored, identity):",
        "if True:",
        ("tests/lightning/test_run_folders.py",),
        "`--ckpt_path last` continuing another configuration's checkpoint",
    ),
    Mutant(
        "skipped-step-rows-repeat",
        "dflow/lightning/rl_module.py",
        "        self._forget_previous_step_logs()\n",
        "",
        ("tests/lightning/test_rl_module.py::test_skipped_steps_do_not_repeat_an_earlier_steps_metrics",),
        "a skipped step's logged row repeating the last trained step's reward and ratios",
    ),
    Mutant(
        "sample-has-its-own-seed",
        "dflow/cli/sample.py",
        '"--seed", type=int, default=EVAL_SEED,',
        '"--seed", type=int, default=0,',
        (RL_WIRING,),
        "`dflow sample` scoring with other noise than the RL evaluation",
    ),
    Mutant(
        "sharded-clip-on-local-shards",
        "dflow/lightning/rl_module.py",
        "return norm_value(torch.nn.utils.clip_grad_norm_(params, max_norm))",
        "local = [p.grad.to_local() if hasattr(p.grad, 'to_local') else p.grad for p in params]\n"
        "        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in local]))\n"
        "        for g in local:\n"
        "            g.mul_(torch.clamp(max_norm / (norm + 1e-6), max=1.0))\n"
        "        return norm",
        ("tests/lightning/test_ddp.py::test_two_process_fsdp2_resumed_matches_one_process",),
        "under FSDP2 the gradient norm taken over one rank's shards only",
    ),
    Mutant(
        "sharded-reference-left-whole",
        "dflow/lightning/rl_module.py",
        "            if isinstance(self.reference, torch.nn.Module):  # a frozen copy is sharded the same way\n"
        "                shard(self.reference, mesh)  # (with LoRA the reference is the sharded policy, adapters off)",
        "            pass",
        ("tests/lightning/test_ddp.py::test_two_process_fsdp2_resumed_matches_one_process",),
        "under FSDP2 the KL reference not sharded (each rank keeps a whole copy)",
    ),
    # ---- LoRA and bf16-true (issue 15)
    Mutant(
        "lora-reference-with-adapters-on",
        "dflow/models/lora.py",
        "with self.model.disable_adapter():  # type: ignore[operator]",
        "with __import__('contextlib').nullcontext():",
        (LORA_RL,),
        "the KL reference computed with the adapters on (the current policy, so the KL of a step starts at 0)",
    ),
    Mutant(
        "lora-reference-deep-copy",
        "dflow/lightning/rl_module.py",
        "            if has_adapters(self.denoiser):\n",
        "            if False:\n",
        (LORA_RL,),
        "a second copy of the weights as the reference of a LoRA policy",
    ),
    Mutant(
        "lora-optimiser-holds-frozen-base",
        "dflow/lightning/rl_module.py",
        "params = [p for p in self._bound()[1].parameters() if p.requires_grad]",
        "params = list(self._bound()[1].parameters())",
        (LORA_RL,),
        "the optimiser holding the frozen base weights beside the adapters",
    ),
    Mutant(
        "lora-base-not-frozen",
        "dflow/models/lora.py",
        "        return peft.get_peft_model(model, lora)",
        "        return peft.get_peft_model(model, lora).requires_grad_(True)",
        (LORA_RL,),
        "the base weights trained with the adapters (the reference moves)",
    ),
    Mutant(
        "lora-export-without-merging",
        "dflow/lightning/export.py",
        "        denoiser = merged_copy(denoiser)",
        "        denoiser = base_model(denoiser)",
        (LORA_RL,),
        "export writing the base without the adapters folded in",
    ),
    Mutant(
        "lora-export-merges-the-policy",
        "dflow/models/lora.py",
        "return copy.deepcopy(model).merge_and_unload()",
        "return model.merge_and_unload()",
        (LORA_RL,),
        "export merging the adapters into the live policy (training goes on without them)",
    ),
    Mutant(
        "bf16-old-values-buffer",
        "dflow/rl/update.py",
        "dtype=torch.float32, device=traj.x1.device\n        )",
        "device=traj.x1.device\n        )",
        (DEFAULT_DTYPE,),
        "recomputed old / reference values stored in the default dtype (bfloat16 under bf16-true)",
    ),
    Mutant(
        "bf16-jump-uniforms",
        "dflow/paths/mixture.py",
        "jump = torch.rand(x_t.shape, generator=generator, device=x_t.device, dtype=torch.float32) < lam",
        "jump = torch.rand(x_t.shape, generator=generator, device=x_t.device) < lam",
        (DEFAULT_DTYPE,),
        "the sampler's jump uniforms in the default dtype (8-bit under bf16-true)",
    ),
    # issue 17: the methods the field compares (SPG, coupled-GRPO, wd1)
    Mutant(
        "spg-bounds-swapped",
        "dflow/rl/objectives.py",
        "weights = torch.cat([1.0 - upper, upper], dim=1)",
        "weights = torch.cat([upper, 1.0 - upper], dim=1)",
        (SPG,),
        "SPG raising the upper bound for positive advantages and lowering the lower one for negative ones",
    ),
    Mutant(
        "spg-sign-selection-flipped",
        "dflow/rl/objectives.py",
        "negative = (advantages[:, :1] <= 0).to(logp.dtype)",
        "negative = (advantages[:, :1] >= 0).to(logp.dtype)",
        (SPG,),
        "SPG's bound chosen by the wrong sign of the advantage",
    ),
    Mutant(
        "spg-eubo-without-beta",
        "dflow/rl/likelihood/sandwich.py",
        'terms = torch.where(keep, w.log() + self.eubo_beta * logp, float("-inf"))',
        'terms = torch.where(keep, w.log() + logp, float("-inf"))',
        (SPG,),
        "the EUBO's p^beta taken as p (the 1/beta outside kept)",
    ),
    Mutant(
        "spg-weight-not-inverse-fraction",
        "dflow/rl/likelihood/sandwich.py",
        "return masked, L / masked.sum(-1).double()",
        "return masked, masked.sum(-1).double() / L",
        (SPG,),
        "the ELBO weight of a mask taken as the masked fraction instead of its inverse",
    ),
    Mutant(
        "spg-unit-kind-check-removed",
        "dflow/rl/update.py",
        "        if kind not in accepted:",
        "        if False:",
        (SPG,),
        "SPG's bounds accepted by an objective that treats them as log-probabilities",
    ),
    Mutant(
        "coupled-complement-forgotten",
        "dflow/rl/likelihood/coupled.py",
        "m_b, noised_b = 1.0 - m_a, ~noised_a",
        "m_b, noised_b = 1.0 - m_a, keys < (1.0 - m_a)[..., None]",
        (COUPLED,),
        "the pair's second draw at the complementary level but not on the complementary tokens",
    ),
    Mutant(
        "coupled-level-not-complemented",
        "dflow/rl/likelihood/coupled.py",
        "m_b, noised_b = 1.0 - m_a, ~noised_a",
        "m_b, noised_b = m_a, ~noised_a",
        (COUPLED,),
        "the complement weighted by 1/m instead of 1/(1 - m)",
    ),
    Mutant(
        "coupled-pair-summed-not-averaged",
        "dflow/rl/likelihood/coupled.py",
        "pairs = 0.5 * (torch.stack(draws[0::2], dim=1) + torch.stack(draws[1::2], dim=1))",
        "pairs = torch.stack(draws[0::2], dim=1) + torch.stack(draws[1::2], dim=1)",
        (COUPLED,),
        "a pair's two ELBO draws summed: twice the ELBO",
    ),
    Mutant(
        "wd1-with-ratio",
        "dflow/rl/objectives.py",
        "        return -advantages * logp\n",
        "        return -torch.exp(logp - old_logp).detach() * advantages * logp\n",
        (WD1,),
        "wd1's weighted likelihood importance-weighted by the ratio to the old policy",
    ),
    Mutant(
        "wd1-negative-term-added",
        "dflow/rl/advantages.py",
        "(positive - self.negative_weight * negative)",
        "(positive + self.negative_weight * negative)",
        (WD1,),
        "wd1 pulling the low-reward samples up instead of pushing them down",
    ),
    Mutant(
        "wd1-softmax-over-the-batch",
        "dflow/rl/advantages.py",
        "positive = torch.softmax(self.psi * centred, dim=1)  # [P, G] w+, sums to 1 per group",
        "positive = torch.softmax(self.psi * centred.flatten(), dim=0).view_as(centred) * inp.num_groups",
        (WD1,),
        "wd1's positive weights normalised over the whole batch instead of each group",
    ),
    Mutant(
        "spans-scored-at-the-end-state",
        "dflow/rl/likelihood/spans.py",
        "logits = sampler.logits(policy, x_b, t, traj.cond)  # [B, L, V]",
        "logits = sampler.logits(policy, x_e, t, traj.cond)  # [B, L, V]",
        (SPANS,),
        "a span scored at the state it ends in (the tokens already visible) instead of the one it starts from",
    ),
    Mutant(
        "spans-count-still-masked-tokens",
        "dflow/rl/likelihood/spans.py",
        "data = traj.state(e) < V",
        "data = traj.state(e) <= V",
        (SPANS,),
        "tokens still masked at the span's end counted (their term has no theta)",
    ),
)


def run_tests(root: Path, tests: tuple[str, ...]) -> tuple[int, float, str]:
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-o", "addopts=", *tests]
    start = time.time()
    done = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True)
    tail = (done.stdout + done.stderr).strip().splitlines()
    return done.returncode, time.time() - start, tail[-1] if tail else ""


def scratch_copy(into: Path) -> Path:
    for name in ("dflow", "tests", "recipes"):  # recipes: tests that run a shipped recipe
        shutil.copytree(ROOT / name, into / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", into / "pyproject.toml")
    return into


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", default=None, help="mutant names to run (default: all)")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    opts = parser.parse_args(argv)
    chosen = [m for m in MUTANTS if opts.only is None or m.name in opts.only]
    if opts.list:
        for m in MUTANTS:
            print(f"{m.name:36} {m.file:40} {m.why}")
        return 0
    unknown = set(opts.only or ()) - {m.name for m in MUTANTS}
    if unknown:
        raise SystemExit(f"unknown mutant(s) {sorted(unknown)}; see --list")
    survivors = []
    with tempfile.TemporaryDirectory(prefix="dflow-mutants-") as tmp:
        clean = scratch_copy(Path(tmp) / "clean")
        files = tuple(sorted({t for m in chosen for t in m.tests}))
        code, seconds, last = run_tests(clean, files)
        print(f"{'unmutated':36} {'pass' if code == 0 else 'FAIL':8} {seconds:5.0f} s  {last}")
        if code != 0:
            print("the unmutated copy must pass first")
            return 1
        for i, m in enumerate(chosen):
            root = scratch_copy(Path(tmp) / f"m{i}")
            path = root / m.file
            text = path.read_text()
            if text.count(m.old) != 1:
                print(f"{m.name:36} {'STALE':8} the text to replace occurs {text.count(m.old)} times in {m.file}")
                survivors.append(m.name)
                continue
            path.write_text(text.replace(m.old, m.new))
            code, seconds, last = run_tests(root, m.tests)
            caught = code != 0
            print(f"{m.name:36} {'caught' if caught else 'MISSED':8} {seconds:5.0f} s  {last}")
            if not caught:
                survivors.append(m.name)
            shutil.rmtree(root)
    print(
        f"\n{len(chosen) - len(survivors)} of {len(chosen)} mutants caught"
        + (f"; missed: {survivors}" if survivors else "")
    )
    return 1 if survivors else 0


if __name__ == "__main__":
    sys.exit(main())
