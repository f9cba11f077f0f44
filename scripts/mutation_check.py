"""Plant known RL wiring bugs one at a time and check that the test suite fails on each.

A test earns trust by failing: each mutant below is a one-line bug that once passed every test (the
first four were found by an outside review) or that a fix of issue 13 removed; later ones were planted
by a review of new code (testbed gradients and presets, custom-code dLLM loading, block decoding from
recipes, sudoku's pooled cell metric, the demo), some caught only by the tests it added. For every mutant the
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
GRADIENTS = "tests/testbed/test_testbed_gradients.py"
STUDY = "tests/testbed/test_testbed_study.py"
CUSTOM_CODE = "tests/models/test_custom_code.py"
BLOCK_RL = "tests/lightning/test_block_rl.py"
INNER = "tests/lightning/test_rl_inner.py"
EVAL_METRICS = "tests/lightning/test_evaluation_metrics.py"
DEMO = "tests/test_demo.py"
BAD_INPUT = "tests/test_bad_input_catalogue.py"
HEAD_LOGITS = "tests/test_head_logits.py"

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
        "u = keyed_uniforms(self.mc_seed, x_t, x_s, t, s, n).to(cdf.dtype) * cdf[..., -1:]",
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
        "dflow/paths/keyed_uniforms.py",
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
        "dflow/lightning/rl_inner.py",
        "return norm_value(torch.nn.utils.clip_grad_norm_(params, max_norm))",
        "local = [p.grad.to_local() if hasattr(p.grad, 'to_local') else p.grad for p in params]\n"
        "    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in local]))\n"
        "    for g in local:\n"
        "        g.mul_(torch.clamp(max_norm / (norm + 1e-6), max=1.0))\n"
        "    return norm",
        ("tests/lightning/test_ddp.py::test_two_process_fsdp2_resumed_matches_one_process",),
        "under FSDP2 the gradient norm taken over one rank's shards only",
    ),
    Mutant(
        "clip-ignores-max-grad-norm",
        "dflow/lightning/rl_module.py",
        "max_grad_norm=self.optim.max_grad_norm,",
        "max_grad_norm=None,",
        (INNER,),
        "the module's optim.max_grad_norm never reaching the inner loop (AdamW hides it from the weights)",
    ),
    Mutant(
        "inner-fault-keeps-earlier-steps",
        "dflow/lightning/rl_inner.py",
        "if saved is not None and i > 0:",
        "if False:",
        (INNER, "tests/lightning/test_rl_module.py::test_fault_in_a_later_minibatch_undoes_the_whole_rl_step"),
        "a non-finite loss in a later mini-batch leaving the RL step's earlier optimiser steps in place",
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
        "with self.model.disable_adapter():  # type: ignore[operator]  # a peft.PeftModel (checked in __init__)",
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
        "counted = traj.state(e) < V",
        "counted = traj.state(e) <= V",
        (SPANS,),
        "tokens still masked at the span's end counted (their term has no theta)",
    ),
    Mutant(
        "grad-estimate-sign",
        "dflow/testbed/gradients.py",
        "grads.append(-flat_grad(params))",
        "grads.append(flat_grad(params))",
        (GRADIENTS,),
        "the gradient study's estimate taken as +grad(loss) instead of -grad(loss)",
    ),
    Mutant(
        "exact-grad-on-test-prompts",
        "dflow/testbed/gradients.py",
        'evaluator = ExactEvaluator(task, sampler, task.prompts("rl"))',
        'evaluator = ExactEvaluator(task, sampler, task.prompts("test"))',
        (GRADIENTS,),
        "the exact gradient taken on the test prompts while the batches come from the rl prompts",
    ),
    Mutant(
        "debiased-norm-without-N",
        "dflow/testbed/gradients.py",
        "signal = mean.pow(2).sum() - trace / N",
        "signal = mean.pow(2).sum() - trace",
        (GRADIENTS,),
        "|E g|^2 debiased by tr(Sigma) instead of tr(Sigma) / N",
    ),
    Mutant(
        "variance-over-N",
        "dflow/testbed/gradients.py",
        "trace = (grads - mean).pow(2).sum(-1).sum() / (N - 1)",
        "trace = (grads - mean).pow(2).sum(-1).sum() / N",
        (GRADIENTS,),
        "tr(Sigma) estimated over N instead of N - 1 (biased)",
    ),
    Mutant(
        "study-epochs-override-ignored",
        "dflow/testbed/study.py",
        "epochs = preset.num_inner_epochs if num_inner_epochs is None else num_inner_epochs",
        "epochs = preset.num_inner_epochs",
        (STUDY,),
        "build_method ignoring its num_inner_epochs override",
    ),
    Mutant(
        "study-run-drops-epochs",
        "dflow/testbed/study.py",
        'build_method(run["method"], path, G, spec.rollout_steps, spec.num_inner_epochs)',
        'build_method(run["method"], path, G, spec.rollout_steps)',
        (STUDY,),
        "a study's num_inner_epochs never passed to its runs",
    ),
    Mutant(
        "minibatch-in-prompts-not-rows",
        "dflow/testbed/study.py",
        "mb = None if preset.minibatch_groups is None else preset.minibatch_groups * group_size",
        "mb = preset.minibatch_groups",
        (STUDY,),
        "a preset's minibatch_groups used as rows instead of groups x G",
    ),
    Mutant(
        "spg-preset-wrong-source",
        "dflow/testbed/presets.py",
        'sources=("mask",),',
        'sources=("uniform",),',
        (STUDY, GRADIENTS),
        "SPG's preset paired with the uniform source its maths does not cover",
    ),
    Mutant(
        "runs-ignore-sources",
        "dflow/testbed/study.py",
        "            if s in METHODS[m].sources\n",
        "",
        (STUDY,),
        "a study pairing every method with every source",
    ),
    Mutant(
        "elbo-par-preset-builds-epg",
        "dflow/testbed/presets.py",
        '"elbo_par": MethodPreset("elbo_par.yaml", lambda: _elbo_parts(PAR())),',
        '"elbo_par": MethodPreset("elbo_par.yaml", lambda: _elbo_parts(EPG())),',
        (STUDY, GRADIENTS),
        "the PAR preset building EPG (same gradient with one inner epoch)",
    ),
    Mutant(
        "opt-in-check-skipped",
        "dflow/models/hf_loading.py",
        "    if references and not trust_remote_code:",
        "    if False:",
        (CUSTOM_CODE,),
        "a folder's own modelling code loaded without trust_remote_code",
    ),
    Mutant(
        "mask-id-from-any-config",
        "dflow/models/hf_adapter.py",
        'from_config = getattr(self.mlm.config, "mask_token_id", None) if self.custom_code else None',
        'from_config = getattr(self.mlm.config, "mask_token_id", None)',
        (CUSTOM_CODE,),
        "the mask id read from a transformers config's unused default (XLM: 0)",
    ),
    Mutant(
        "shift-logits-wrong-way",
        "dflow/models/hf_adapter.py",
        "source = (torch.arange(length, device=data_logits.device) + self.prompt_len - 1).clamp_min(0)",
        "source = (torch.arange(length, device=data_logits.device) + self.prompt_len + 1)"
        ".clamp_max(self.prompt_len + length - 1)",
        (CUSTOM_CODE,),
        "Dream's shifted logits read from position i + 1 instead of i - 1",
    ),
    Mutant(
        "shift-logits-ignores-prompt",
        "dflow/models/hf_adapter.py",
        "source = (torch.arange(length, device=data_logits.device) + self.prompt_len - 1).clamp_min(0)",
        "source = (torch.arange(length, device=data_logits.device) - 1).clamp_min(0)",
        (CUSTOM_CODE,),
        "shifted logits read from the prompt's positions (prompt length forgotten)",
    ),
    Mutant(
        "custom-code-given-attention-mask",
        "dflow/models/hf_adapter.py",
        "            if self.custom_code:  # LLaDA",
        "            if False:  # LLaDA",
        (CUSTOM_CODE,),
        "custom code called with a 2-D attention mask (Dream rejects it)",
    ),
    Mutant(
        "remote-other-repo-accepted",
        "dflow/models/hf_loading.py",
        '        if "--" in joined:',
        "        if False:",
        (CUSTOM_CODE, BAD_INPUT),
        "an auto_map entry into another hub repository accepted",
    ),
    Mutant(
        "bidirectional-check-skipped",
        "dflow/models/hf_loading.py",
        "    if torch.equal(logits[0, 0], logits[1, 0]):",
        "    if False:",
        (CUSTOM_CODE, BAD_INPUT),
        "a custom-code causal LM accepted as a masked denoiser",
    ),
    Mutant(
        "export-drops-shift-logits",
        "dflow/lightning/export.py",
        '"shift_logits": denoiser.shift_logits,',
        '"shift_logits": False,',
        (CUSTOM_CODE,),
        "an exported custom-code model losing shift_logits",
    ),
    Mutant(
        "rollout-built-from-eval-config",
        "dflow/lightning/rl_module.py",
        'self.rollout_sampler = self.rollout_config.build(path, record_draws=likelihood.needs_draws, where="rollout")',
        'self.rollout_sampler = self.eval_config.build(path, record_draws=likelihood.needs_draws, where="rollout")',
        (BLOCK_RL,),
        "block rollouts built from the evaluation's sampler settings",
    ),
    Mutant(
        "block-check-on-eval-sampler",
        "dflow/lightning/rl_module.py",
        "            self.rollout_sampler,\n            self.update.likelihood,",
        "            self.eval_sampler,\n            self.update.likelihood,",
        (BLOCK_RL, BAD_INPUT),
        "the block likelihood check run on the evaluation sampler, not the rollout one",
    ),
    Mutant(
        "export-block-kernel-dropped",
        "dflow/lightning/export.py",
        'out["block"] = {"block_len": config.block.block_len, "kernel": describe(config.block.kernel)}',
        'out["block"] = {"block_len": config.block.block_len}',
        (BLOCK_RL,),
        "a model folder's block setting recorded without its kernel (reloads PathKernel)",
    ),
    Mutant(
        "block-len-divisibility-unchecked",
        "dflow/sampling/config.py",
        "        if seq_len % self.block_len:",
        "        if False:",
        (BLOCK_RL, BAD_INPUT),
        "a block_len that does not divide the task's seq_len accepted",
    ),
    Mutant(
        "block-len-canvas-unchecked",
        "dflow/lightning/block_builders.py",
        "        if config.block.block_len != canvas:",
        "        if False:",
        (BLOCK_RL, BAD_INPUT),
        "DiffusionGemma decoding blocks unlike its canvas_length",
    ),
    Mutant(
        "block-steps-total-not-per-block",
        "dflow/sampling/config.py",
        "steps_per_block=self.num_steps",
        "steps_per_block=max(1, self.num_steps // self.block.block_len)",
        (BLOCK_RL,),
        "a block setting's num_steps taken as total steps, not steps per block",
    ),
    Mutant(
        "block-kernel-fit-unchecked",
        "dflow/sampling/config.py",
        "            kernel.check(path)\n",
        "            pass\n",
        (BLOCK_RL, BAD_INPUT),
        "a block kernel that does not fit the path's source accepted",
    ),
    Mutant(
        "cells-per-puzzle-mean",
        "dflow/tasks/metrics.py",
        "(self.num_right.sum().double() / total).float() if total > 0",
        "(acc.nanmean()).float() if total > 0",
        (EVAL_METRICS,),
        "sudoku's overall cell accuracy averaged per category, not pooled over cells",
    ),
    Mutant(
        "extra-metrics-not-updated-per-chunk",
        "dflow/lightning/evaluation.py",
        "            m.update(x1, chunk)",
        "            m.update(x1, chunk) if start == 0 else None",
        (EVAL_METRICS,),
        "a task's extra metrics fed only the first evaluation chunk",
    ),
    Mutant(
        "sudoku-no-extra-metrics",
        "dflow/tasks/sudoku/task.py",
        "return [SampleMetric(self.cell_metric(), self.blank_cells)]",
        "return []",
        (EVAL_METRICS, DEMO),
        "sudoku evaluations without the pooled cell accuracy",
    ),
    Mutant(
        "demo-sudoku-runs-shapes",
        "dflow/demo.py",
        '"sudoku": "recipes/sudoku/demo.yaml"',
        '"sudoku": "recipes/shapes/demo.yaml"',
        (DEMO,),
        "dflow demo --task sudoku running the shapes recipe",
    ),
    Mutant(
        "demo-task-ignored",
        "dflow/demo.py",
        "name = DEFAULT_TASK if task is None else task",
        "name = DEFAULT_TASK",
        (DEMO,),
        "dflow demo's --task ignored (always the default)",
    ),
    Mutant(
        "fwd-equiv-not-per-batch",
        "dflow/testbed/gradients.py",
        "return torch.stack(grads), compute.fwd_equiv / num_batches",
        "return torch.stack(grads), compute.fwd_equiv",
        (GRADIENTS,),
        "a gradient estimate priced at the whole study's forward passes, not one batch's",
    ),
    Mutant(
        "step-rewards-final-first",
        "dflow/testbed/study.py",
        "step_rewards = torch.stack([*cols, rewards], dim=1)",
        "step_rewards = torch.stack([rewards, *cols], dim=1)",
        (STUDY,),
        "a testbed batch's per-step rewards with the final sample's reward first",
    ),
    Mutant(
        "kernel-init-args-dropped",
        "dflow/sampling/config.py",
        'return cls(**dict(description.get("init_args") or {}))',
        "return cls()",
        (BLOCK_RL,),
        "a recorded block kernel rebuilt without its init_args (a model folder's settings lost)",
    ),
    Mutant(
        "udm-scores-full-logits",
        "dflow/rl/likelihood/final_sample.py",
        "                logits = scoring_logits(policy, x_in, t, traj.cond)",
        "                logits = policy(x_in, t, traj.cond)",
        (HEAD_LOGITS,),
        "UDM-GRPO's units scored from full logits again: every unit's [B, L, V] kept until backward",
    ),
    Mutant(
        "lora-reference-head-adapters-on",
        "dflow/models/lora.py",
        "            with self.model.disable_adapter():  # type: ignore[operator]\n"
        "                return logits.head(h)",
        "            return logits.head(h)",
        (HEAD_LOGITS,),
        "the LoRA reference's fused head applied with the adapters on (a LoRA-targeted head scores as the policy)",
    ),
    Mutant(
        "fused-head-temperature-dropped",
        "dflow/sampling/sampler.py",
        "        return out if self.temperature == 1.0 else out.with_head(self._tempered)",
        "        return out",
        (HEAD_LOGITS,),
        "intermediate actions scored at temperature 1 through the fused head while the rollout sampled tempered",
    ),
    Mutant(
        "pretrain-scores-full-logits",
        "dflow/lightning/pretrain.py",
        "            logits = scoring_logits(denoiser, x_t, t, cond)",
        "            logits = denoiser(x_t, t, cond)",
        (HEAD_LOGITS,),
        "pretraining losses given full logits again (no chunk-only memory for SFT)",
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
    for name in (
        "dflow",
        "tests",
        "recipes",
        "docs",
    ):  # recipes: tests that run a shipped recipe; docs: the catalogue test
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
