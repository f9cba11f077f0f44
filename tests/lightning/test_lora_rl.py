"""RL with LoRA adapters: the KL reference is the base network (adapters off, no second copy), only
the adapters train, each RL step starts exactly on-policy, and export merges the adapters."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import pytest
import torch

from dflow import cli as dflow_cli
from dflow.cli import run_lightning_cli
from dflow.lightning.builders import PretrainedDenoiser
from dflow.lightning.rewards import RewardSpec
from dflow.lightning.rl_module import RLModule
from dflow.models import DFlowTransformer, count_parameters
from dflow.models.lora import AdaptersOff, LoRAConfig
from dflow.paths import LinearScheduler, MixturePath, UniformSource
from dflow.rl import ClippedSurrogate, ForwardReconstruction, GroupAdvantage, KLPenalty
from dflow.sampling import SamplerConfig
from dflow.tasks import ShapesTask
from tests.conftest import TinyTransformerBuilder, rl_settings

pytest.importorskip("peft")
pytestmark = pytest.mark.usefixtures("single_thread")

ROOT = Path(__file__).resolve().parents[2]
V, K, G, P = 3, 4, 4, 2  # copy task values, sampler steps, group size, prompts per RL step


def red_pixels(x1: torch.Tensor, prompts) -> torch.Tensor:
    """A shapes reward that varies within groups of a random policy (the task's own is 0 for it)."""
    return (x1 == 1).float().mean(-1)


def udm_module(lora: LoRAConfig | None, **overrides) -> RLModule:
    """UDM-GRPO with a k3 KL to the initial policy, 2 inner epochs x 2 mini-batches per RL step."""
    settings = dict(
        rollout=SamplerConfig(num_steps=K),
        evaluation=SamplerConfig(num_steps=K),
        group_size=G,
        num_inner_epochs=2,
        minibatch_size=4,
        lr=5e-2,
        eval_every_n_steps=0,
    )
    settings.update(overrides)
    return RLModule(
        TinyTransformerBuilder(),
        MixturePath(UniformSource(V)),
        ForwardReconstruction(num_timesteps=2, grid_steps=4, max_start=1),
        ClippedSurrogate(0.2),
        GroupAdvantage(),
        KLPenalty(0.05, "k3"),
        lora=lora,
        **rl_settings(**settings),
    )


def trainer(tmp_path, **kwargs) -> L.Trainer:
    defaults = dict(
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    return L.Trainer(**{**defaults, **kwargs})


def probe(task):
    """Fixed denoiser inputs of the copy task: x_t [6, 4] states, t [6], prompts [6, 4]."""
    gen = torch.Generator().manual_seed(3)
    return (
        torch.randint(0, V, (6, task.seq_len), generator=gen),
        torch.rand(6, generator=gen),
        torch.randint(1, V + 1, (6, task.prompt_len), generator=gen),
    )


def test_reference_is_the_base_with_adapters_off_and_only_adapters_train(copy_task, prompt_batches, tmp_path):
    """Three RL steps of 2 inner epochs x 2 mini-batches with LoRA and a KL to the initial policy.

    - the reference computes what the base network computes, bit for bit, before and after training,
      while the policy moves away from it; the logged KL of each later step's first mini-batch is > 0;
    - the first mini-batch of every RL step has ratio exactly 1 (old values: the policy, adapters on);
    - the optimiser holds exactly the adapter matrices; no base weight gets a gradient;
    - no second copy of the weights: the module holds base + adapters, where the deep-copy
      reference of a full fine-tune holds two bases.
    """
    path = MixturePath(UniformSource(V))
    base = TinyTransformerBuilder().build(copy_task, path).eval()  # the same seed: the weights the module starts from
    module = udm_module(LoRAConfig(rank=2, alpha=4))
    module.attach_task(copy_task)
    x_t, t, cond = probe(copy_task)
    with torch.no_grad():
        base_logits = base(x_t, t, cond)
        assert torch.equal(module.policy(x_t, t, cond), base_logits)  # B = 0: the policy starts at the base
        assert torch.equal(module.reference(x_t, t, cond), base_logits)

    calls: list[dict[str, float]] = []
    loss = module.update.loss

    def spy(*args, **kwargs):
        out = loss(*args, **kwargs)
        calls.append(out.stats)
        return out

    module.update.loss = spy
    fit = trainer(tmp_path)
    fit.fit(module, datamodule=prompt_batches(copy_task, num_batches=3, prompts_per_step=P))

    assert len(calls) == 3 * 4
    for step in range(3):
        first, *later = calls[4 * step : 4 * step + 4]
        assert first["ratio_min"] == 1.0 == first["ratio_max"], (step, first)
        assert any(c["ratio_min"] < 1 - 1e-6 or c["ratio_max"] > 1 + 1e-6 for c in later), (step, later)
        if step:
            assert first["kl"] > 0, (step, first)  # the reference is not the policy any more
    with torch.no_grad():
        assert torch.equal(module.reference(x_t, t, cond), base_logits)  # the base did not move
        assert not torch.allclose(module.policy(x_t, t, cond), base_logits, atol=1e-4)  # the policy did

    denoiser = module.denoiser
    adapters = {name: p for name, p in denoiser.named_parameters() if p.requires_grad}
    assert adapters and all(".lora_A." in n or ".lora_B." in n for n in adapters)
    frozen = [p for p in denoiser.parameters() if not p.requires_grad]
    assert frozen and all(p.grad is None for p in frozen)
    optimised = [p for group in fit.optimizers[0].param_groups for p in group["params"]]
    assert {id(p) for p in optimised} == {id(p) for p in adapters.values()}
    assert len(optimised) == len(adapters)

    # memory: the reference adds nothing to the module's parameters, state dict or storages
    assert isinstance(module.reference, AdaptersOff) and module.reference.model is denoiser
    base_size = count_parameters(base, trainable_only=False)
    adapter_size = sum(p.numel() for p in adapters.values())
    assert count_parameters(module, trainable_only=False) == base_size + adapter_size
    assert not [k for k in module.state_dict() if k.startswith("reference.")]
    storages = {p.untyped_storage().data_ptr() for p in module.parameters()}
    assert len(storages) == len(list(module.parameters()))  # every parameter has its own storage, once
    full = udm_module(None)
    full.attach_task(copy_task)
    assert count_parameters(full, trainable_only=False) == 2 * base_size  # what LoRA's reference saves


def test_export_merges_the_adapters_into_a_plain_model_folder(prompt_batches, tmp_path):
    """``export_pretrained`` writes the adapted policy as a plain DFlowTransformer folder: its logits
    equal the policy's (merging rounds in the last bits), the module keeps its adapters, and
    ``PretrainedDenoiser`` and ``dflow sample`` load the folder like any base."""
    task = ShapesTask(height=8, width=8, pretrain_prompts_per_category=4, test_prompts_per_category=2)
    module = RLModule(
        TinyTransformerBuilder(),
        MixturePath(UniformSource(7)),
        ForwardReconstruction(num_timesteps=2, grid_steps=4, max_start=1),
        ClippedSurrogate(0.2),
        GroupAdvantage(),
        KLPenalty(0.05, "k3"),
        lora=LoRAConfig(rank=2, alpha=4),
        rewards=[RewardSpec(source="test_lora_rl:red_pixels")],
        **rl_settings(
            rollout=SamplerConfig(num_steps=2),
            evaluation=SamplerConfig(num_steps=2),
            group_size=2,
            lr=5e-2,
            eval_every_n_steps=0,
        ),
    )
    trainer(tmp_path).fit(module, datamodule=prompt_batches(task, num_batches=2, prompts_per_step=2))
    gen = torch.Generator().manual_seed(0)
    x_t, t = torch.randint(0, 7, (4, task.seq_len), generator=gen), torch.rand(4, generator=gen)
    cond = task.encode_prompts(task.prompts("test")[:4])
    with torch.no_grad():
        adapted = module.policy(x_t, t, cond)
        base = module.reference(x_t, t, cond)
    assert not torch.allclose(adapted, base, atol=1e-4)  # the adapters learned something to merge

    folder = module.export_pretrained(tmp_path / "merged")
    assert not (folder / "adapter_config.json").exists()
    meta = json.loads((folder / "dflow_meta.json").read_text())
    assert meta["denoiser"] == "DFlowTransformer" and meta["training"]["lora_merged"]["rank"] == 2
    loaded = PretrainedDenoiser(str(folder)).build(task, MixturePath(UniformSource(7), LinearScheduler())).eval()
    assert type(loaded) is DFlowTransformer and not any("lora" in k for k in loaded.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(loaded(x_t, t, cond), adapted, rtol=1e-5, atol=1e-5)
        assert torch.equal(module.policy(x_t, t, cond), adapted)  # export merged a copy, not the policy
    report = tmp_path / "sample.json"
    args = ["sample", "--checkpoint", str(folder), "--out", str(tmp_path / "g.png"), "--steps", "2", "--prompts", "4"]
    assert dflow_cli.main([*args, "--json", str(report)]) == 0
    assert json.loads(report.read_text())["n"] == 4


def test_the_lora_recipe_trains_and_dflow_export_merges_its_run(tmp_path, monkeypatch):
    """The shapes LoRA recipe through the CLI: adapters only in the optimiser, and `dflow export` of its
    run folder (which rebuilds the module from config.yaml and the checkpoint) merges them."""
    monkeypatch.chdir(tmp_path)
    run = run_lightning_cli(
        [
            "fit",
            "--config",
            str(ROOT / "recipes/shapes/udm_grpo_lora.yaml"),
            "--model.init_args.denoiser=dflow.lightning.TransformerDenoiser",
            "--model.init_args.denoiser.init_args.hidden_size=16",
            "--model.init_args.denoiser.init_args.num_layers=1",
            "--model.init_args.denoiser.init_args.num_heads=2",
            "--model.init_args.evaluation.every_n_steps=0",
            "--model.init_args.rollout.num_steps=2",
            "--model.init_args.optim.lr=5e-2",
            '--model.init_args.rewards=[{"source": "test_lora_rl:red_pixels"}]',
            "--data.init_args.prompts_per_step=1",
            "--data.init_args.task.init_args.height=8",
            "--data.init_args.task.init_args.width=8",
            "--trainer.max_steps=2",
            "--trainer.enable_progress_bar=false",
            "--trainer.enable_model_summary=false",
        ]
    )
    module = run.model
    assert module.lora is not None and isinstance(module.reference, AdaptersOff)
    optimised = [p for group in run.trainer.optimizers[0].param_groups for p in group["params"]]
    assert {id(p) for p in optimised} == {id(p) for p in module.denoiser.parameters() if p.requires_grad}
    out = tmp_path / "tuned"
    assert dflow_cli.main(["export", str(run.trainer.log_dir), str(out)]) == 0
    task = ShapesTask(height=8, width=8)
    loaded = PretrainedDenoiser(str(out)).build(task, MixturePath(UniformSource(7), LinearScheduler())).eval()
    gen = torch.Generator().manual_seed(0)
    x_t, t = torch.randint(0, 7, (3, task.seq_len), generator=gen), torch.rand(3, generator=gen)
    cond = task.encode_prompts(task.prompts("test")[:3])
    with torch.no_grad():
        adapted = module.policy(x_t, t, cond)
        assert not torch.allclose(adapted, module.reference(x_t, t, cond), atol=1e-5)
        torch.testing.assert_close(loaded(x_t, t, cond), adapted, rtol=1e-5, atol=1e-5)


def test_a_masked_lm_trains_adapters_and_exports_merged(prompt_batches, tmp_path):
    """LoRA on an HF masked LM (a tiny BERT built from a config) for the text task: the encoder's
    linear layers get adapters, the reference is the base, and the merged export loads through
    ``PretrainedDenoiser`` as an ``HFMaskedLMDenoiser`` with the policy's logits."""
    from dflow.lightning.hf_builders import HFMaskedLM
    from dflow.models import HFMaskedLMDenoiser
    from dflow.paths import MaskSource
    from dflow.rl import MeanFieldLikelihood
    from dflow.tasks import TextTask

    task = TextTask()
    path = MixturePath(MaskSource(task.vocab_size))
    bert = {"model_type": "bert", "hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2}
    torch.manual_seed(0)
    module = RLModule(
        HFMaskedLM(config={**bert, "intermediate_size": 32}),
        path,
        MeanFieldLikelihood(per_token=True),
        ClippedSurrogate(0.5),
        GroupAdvantage(),
        KLPenalty(0.04, "k3"),
        lora=LoRAConfig(rank=2, alpha=4),
        **rl_settings(
            rollout=SamplerConfig(num_steps=2),
            evaluation=SamplerConfig(num_steps=2),
            group_size=2,
            lr=5e-2,
            eval_every_n_steps=0,
        ),
    )
    module.attach_task(task)
    adapted_layers = {n.split(".lora_")[0] for n, p in module.denoiser.named_parameters() if p.requires_grad}
    assert adapted_layers and all(".mlm.bert.encoder.layer.0." in n for n in adapted_layers)
    trainer(tmp_path).fit(module, datamodule=prompt_batches(task, num_batches=2, prompts_per_step=2))
    batch = task.sample_data(3, torch.Generator().manual_seed(0), split="test")
    x_t = path.sample_xt(batch.x1, torch.full((3,), 0.5), torch.Generator().manual_seed(1))
    t = torch.full((3,), 0.5)
    with torch.no_grad():
        adapted, base = module.policy(x_t, t, batch.cond), module.reference(x_t, t, batch.cond)
    assert not torch.allclose(adapted, base, atol=1e-5)
    folder = module.export_pretrained(tmp_path / "merged")
    loaded = PretrainedDenoiser(str(folder)).build(task, path).eval()
    assert type(loaded) is HFMaskedLMDenoiser
    with torch.no_grad():
        torch.testing.assert_close(loaded(x_t, t, batch.cond), adapted, rtol=1e-5, atol=1e-5)
