"""Block decoding from RLModule and YAML recipes: ``rollout.block`` / ``evaluation.block`` build
``BlockSampler``s with the recipe's settings, every likelihood that applies runs one RL step on block
rollouts (a plain denoiser and DiffusionGemma), the first inner update's ratio is exactly 1,
evaluation uses its own block settings, model folders record the block sampler so ``dflow sample``
reproduces the evaluation, checkpoints keep the block records, and each shipped block recipe runs one
step through the CLI with its own denoiser."""

from __future__ import annotations

import json
import math
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml

from dflow.cli import main as dflow_main
from dflow.cli import run_lightning_cli
from dflow.lightning import DiffusionGemma, EvalConfig, OptimConfig, RLModule, RolloutConfig, TransformerDenoiser
from dflow.lightning import rl_module as rl_module_file
from dflow.lightning.data import PromptDataModule
from dflow.lightning.evaluation import evaluate
from dflow.lightning.rl_config import as_record
from dflow.models import DiffusionGemmaDenoiser
from dflow.paths import MaskSource, MixturePath, UniformSource
from dflow.rl import (
    EPG,
    REINFORCE,
    ClippedSurrogate,
    CoupledELBOLikelihood,
    ELBOLikelihood,
    ForwardReconstruction,
    GroupAdvantage,
    GroupSoftmaxWeights,
    MeanFieldLikelihood,
    SampleSumAggregation,
    SandwichedBounds,
    SandwichedObjective,
    SpanLikelihood,
    TrajectoryLikelihood,
)
from dflow.sampling import BlockConfig, BlockSampler, ConfidenceUnmaskKernel, EntropyBoundKernel, PathKernel, Sampler
from dflow.tasks import get_task

pytestmark = pytest.mark.usefixtures("single_thread")  # tiny tensors: a second thread only contends

ROOT = Path(__file__).resolve().parents[2]
TASK = get_task("text")  # 4x4 sudoku: V = 4, L = 16, prompts of 19 tokenizer ids
DG_TEXT = {"hidden_size": 16, "head_dim": 8, "global_head_dim": 8, "intermediate_size": 32, "moe_intermediate_size": 16}


def plain() -> TransformerDenoiser:
    return TransformerDenoiser(hidden_size=16, num_layers=1, num_heads=2)


def gemma(canvas: int = 4) -> DiffusionGemma:
    """A tiny random DiffusionGemma over the text task's tokenizer (peaked enough that the entropy
    bound accepts some cells and rejects others)."""
    return DiffusionGemma(config={"canvas_length": canvas, "initializer_range": 0.5, "text_config": DG_TEXT})


def mask_path() -> MixturePath:
    return MixturePath(MaskSource(4))


def uniform_path() -> MixturePath:
    return MixturePath(UniformSource(4))


def make(
    denoiser,
    path,
    likelihood,
    block: BlockConfig | None,
    eval_block: BlockConfig | None = None,
    steps: int = 2,
    eval_steps: int = 3,
    objective=None,
    every: int = 0,
    inner_epochs: int = 1,
    **kwargs,
) -> RLModule:
    """An RLModule with block rollouts; evaluation differs from the rollout (steps and, if given, block)."""
    torch.manual_seed(0)
    return RLModule(
        denoiser,
        path,
        likelihood,
        objective if objective is not None else ClippedSurrogate(0.2),
        rollout=RolloutConfig(num_steps=steps, group_size=4, block=block),  # 4: rewards rarely tie in a group
        optim=OptimConfig(lr=1e-2, num_inner_epochs=inner_epochs),
        evaluation=EvalConfig(
            num_steps=eval_steps,
            every_n_steps=every,
            num_prompts=3,
            samples_per_prompt=1,
            num_grid_prompts=2,
            block=eval_block if eval_block is not None else block,
        ),
        **kwargs,
    )


def fit(module: RLModule, root: Path, max_steps: int = 1, ckpt_path=None, **trainer) -> L.Trainer:
    L.seed_everything(0)
    settings = dict(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer = L.Trainer(max_steps=max_steps, default_root_dir=root, **{**settings, **trainer})
    trainer.fit(module, datamodule=PromptDataModule(TASK, prompts_per_step=2, seed=0), ckpt_path=ckpt_path)
    return trainer


def unmask(confidence: str = "sampled", block_len: int = 8) -> BlockConfig:
    return BlockConfig(block_len, ConfidenceUnmaskKernel(confidence=confidence))


def entropy(block_len: int = 4, final_step: str = "sample") -> BlockConfig:
    return BlockConfig(block_len, EntropyBoundKernel(entropy_bound=0.5, final_step=final_step))


# every method that applies to block rollouts: per-step (the sampler's exact block steps), spans, and
# the final-sample estimators where the denoiser can score the whole answer (a plain denoiser, or a
# DiffusionGemma whose canvas is the whole answer)
METHODS = {
    # max_prob: with several inner epochs a recorded `sampled` step can have probability 0 under the
    # updated weights (log-prob -inf, a non-finite gradient: see the last test of this file)
    "plain-mask-trajectory": lambda: (
        plain(),
        mask_path(),
        TrajectoryLikelihood(token_mean=True),
        unmask("max_prob"),
    ),
    "plain-mask-trajectory-per-token": lambda: (
        plain(),
        mask_path(),
        TrajectoryLikelihood(per_token=True),
        unmask("max_prob"),
    ),
    "plain-mask-spans": lambda: (plain(), mask_path(), SpanLikelihood(span=2, per_token=True), unmask()),
    "plain-mask-elbo": lambda: (plain(), mask_path(), ELBOLikelihood(num_timesteps=2, grid_steps=4), unmask()),
    "plain-mask-udm": lambda: (
        plain(),
        mask_path(),
        ForwardReconstruction(num_timesteps=2, grid_steps=4, max_start=1),
        unmask(),
    ),
    "plain-mask-mean-field": lambda: (plain(), mask_path(), MeanFieldLikelihood(per_token=True), unmask()),
    "plain-uniform-path-kernel": lambda: (
        plain(),
        uniform_path(),
        TrajectoryLikelihood(),
        BlockConfig(8, PathKernel()),
    ),
    "gemma-trajectory": lambda: (gemma(), uniform_path(), TrajectoryLikelihood(token_mean=True), entropy()),
    "gemma-spans": lambda: (gemma(), uniform_path(), SpanLikelihood(span=2, per_token=True), entropy()),
    "gemma-one-block-elbo": lambda: (gemma(16), uniform_path(), ELBOLikelihood(num_timesteps=2), entropy(16)),
    "gemma-one-block-udm": lambda: (
        gemma(16),
        uniform_path(),
        ForwardReconstruction(num_timesteps=2, grid_steps=4, max_start=1),
        entropy(16),
    ),
    "gemma-one-block-mean-field": lambda: (gemma(16), uniform_path(), MeanFieldLikelihood(), entropy(16)),
    # the other final-sample methods the field compares, on LLaDA-style block rollouts
    "plain-mask-spg": lambda: (plain(), mask_path(), SandwichedBounds(num_draws=2, block_length=4), unmask()),
    "plain-mask-coupled": lambda: (plain(), mask_path(), CoupledELBOLikelihood(per_token=True), unmask()),
    "plain-mask-wd1": lambda: (plain(), mask_path(), MeanFieldLikelihood(), unmask()),
    "gemma-one-block-coupled": lambda: (gemma(16), uniform_path(), CoupledELBOLikelihood(), entropy(16)),
}
# the parts a method needs besides its likelihood (make()'s defaults otherwise: ClippedSurrogate(0.2))
PARTS = {
    "plain-mask-elbo": dict(objective=EPG()),
    "gemma-one-block-elbo": dict(objective=EPG()),
    "plain-mask-spg": dict(
        objective=SandwichedObjective(), aggregation=SampleSumAggregation(), advantage=GroupAdvantage(scale="none")
    ),
    "plain-mask-wd1": dict(objective=REINFORCE(), advantage=GroupSoftmaxWeights()),
}


def other_eval_block(block: BlockConfig) -> BlockConfig:
    """An evaluation block setting unlike the rollout's: another block length, or for DiffusionGemma
    (whose canvas fixes the block length) another kernel setting."""
    kernel = block.kernel
    if isinstance(kernel, EntropyBoundKernel):
        return BlockConfig(block.block_len, EntropyBoundKernel(entropy_bound=0.2, final_step="argmax"))
    return BlockConfig(4 if block.block_len != 4 else 8, kernel)


@pytest.mark.parametrize("name", list(METHODS))
def test_one_rl_step_on_block_rollouts(name, tmp_path):
    denoiser, path, likelihood, block = METHODS[name]()
    # two inner epochs: the old units are genuinely computed before the first update (recorded by the
    # rollout or recomputed), not the first update's own values detached (a single pass)
    eval_block = other_eval_block(block)
    module = make(denoiser, path, likelihood, block, eval_block, inner_epochs=2, **PARTS.get(name, {}))
    module.attach_task(TASK)
    before = {k: v.clone() for k, v in module.denoiser.state_dict().items()}
    first: list[dict[str, float]] = []
    loss = module.update.loss

    def first_loss(*args, **kwargs):
        out = loss(*args, **kwargs)
        first.append(out.stats)
        return out

    module.update.loss = first_loss  # type: ignore[method-assign]
    trainer = fit(module, tmp_path)
    assert trainer.global_step == 1
    assert isinstance(module.rollout_sampler, BlockSampler)
    assert all(torch.isfinite(v) for v in trainer.callback_metrics.values())
    # the first inner update runs at the rollout's weights with old units from the same rollout
    # sampler, so every ratio is exactly 1 (units from the evaluation sampler would differ: other
    # blocks or steps); the second runs after an optimiser step
    assert len(first) == 2
    assert first[0]["ratio_min"] == 1.0 and first[0]["ratio_max"] == 1.0
    changed = [k for k, v in module.denoiser.state_dict().items() if not torch.equal(v, before[k])]
    assert changed, "the RL step changed no weight"
    if isinstance(module.denoiser, DiffusionGemmaDenoiser):
        assert any("decoder" in k for k in changed)


def test_samplers_follow_the_rollout_and_evaluation_records():
    rollout_kernel = ConfidenceUnmaskKernel(confidence="sampled")
    eval_kernel = ConfidenceUnmaskKernel(threshold=0.5)
    module = make(
        plain(),
        mask_path(),
        TrajectoryLikelihood(),
        BlockConfig(4, rollout_kernel),
        eval_block=BlockConfig(8, eval_kernel),
        steps=2,
        eval_steps=3,
    )
    ro, ev = module.rollout_sampler, module.eval_sampler
    assert isinstance(ro, BlockSampler) and isinstance(ev, BlockSampler)
    assert (ro.block_len, ro.steps_per_block, ro.kernel) == (4, 2, rollout_kernel)
    assert (ev.block_len, ev.steps_per_block, ev.kernel) == (8, 3, eval_kernel)
    # the flat records are unchanged: no block, the whole-sequence sampler
    flat = make(plain(), mask_path(), TrajectoryLikelihood(), None)
    assert type(flat.rollout_sampler) is Sampler and type(flat.eval_sampler) is Sampler
    assert flat.rollout_sampler.num_steps == 2 and flat.eval_sampler.num_steps == 3


@pytest.mark.parametrize("kind", ["plain", "gemma"])
def test_evaluation_uses_its_own_block_settings(kind, tmp_path, monkeypatch):
    if kind == "plain":
        module = make(
            plain(),
            mask_path(),
            TrajectoryLikelihood(),
            unmask("max_prob", 4),
            eval_block=unmask("sampled", 8),
            every=1,
        )
    else:  # DiffusionGemma: the canvas fixes block_len, so evaluation differs in steps and final step
        module = make(
            gemma(), uniform_path(), TrajectoryLikelihood(), entropy(), eval_block=entropy(4, "argmax"), every=1
        )
    used = []
    real = rl_module_file.evaluate

    def spy(policy, task, sampler, *args, **kwargs):
        used.append(sampler)
        return real(policy, task, sampler, *args, **kwargs)

    monkeypatch.setattr(rl_module_file, "evaluate", spy)
    fit(module, tmp_path)
    assert used and all(s is module.eval_sampler for s in used)
    ev = module.eval_config.block
    assert (used[0].block_len, used[0].steps_per_block, used[0].kernel) == (ev.block_len, 3, ev.kernel)
    # and the numbers are those of a sampler built afresh from the evaluation settings
    fresh = BlockSampler(module.path, ev.kernel, block_len=ev.block_len, steps_per_block=3)
    direct = evaluate(module.policy, TASK, fresh, module.eval_prompts, module.eval_config.batch_size)
    assert module.run_evaluation()["eval/reward"] == direct.metrics["reward"]


@pytest.mark.parametrize("kind", ["plain", "gemma"])
def test_model_folder_records_the_block_sampler_and_dflow_sample_reproduces_it(kind, tmp_path):
    if kind == "plain":
        module = make(plain(), mask_path(), TrajectoryLikelihood(), unmask("max_prob", 4), eval_block=unmask("sampled"))
    else:
        module = make(gemma(), uniform_path(), TrajectoryLikelihood(), entropy(), eval_block=entropy(4, "argmax"))
    module.attach_task(TASK)
    folder = module.export_pretrained(tmp_path / "model")
    meta = json.loads((folder / "dflow_meta.json").read_text())
    kernel = module.eval_config.block.kernel
    assert meta["eval"]["num_steps"] == 3
    assert meta["eval"]["block"]["block_len"] == module.eval_config.block.block_len
    assert meta["eval"]["block"]["kernel"] == {
        "class_path": f"dflow.sampling.kernels.{type(kernel).__name__}",
        "init_args": {k: v for k, v in vars(kernel).items()},
    }
    if kind == "gemma":
        assert meta["denoiser"] == "DiffusionGemmaDenoiser"
        assert meta["diffusion_gemma"]["data_token_ids"] == TASK.data_token_ids
    # the module's own evaluation on 3 test prompts, 1 sample each, batch 64, seed 1234 ...
    expected = evaluate(module.policy, TASK, module.eval_sampler, module.eval_prompts, module.eval_config.batch_size)
    # ... is what `dflow sample` computes from the folder alone
    out = tmp_path / "sample.json"
    dflow_main(
        ["sample", "--checkpoint", str(folder), "--prompts", "3", "--out", str(tmp_path / "s.png"), "--json", str(out)]
    )
    got = json.loads(out.read_text())
    assert got["sampler"]["block"] == meta["eval"]["block"]
    assert got["reward"] == pytest.approx(expected.metrics["reward"], abs=1e-6)
    assert got["acc/overall"] == expected.metrics["acc/overall"]


def test_block_records_survive_a_weights_only_checkpoint_and_resume(tmp_path):
    """The block setting (a dataclass holding a kernel object) is in the saved hyperparameters; a
    ``weights_only`` load (FSDP2 resumes, LightningCLI's --ckpt_path) reads it, and a run resumes."""

    def module() -> RLModule:
        return make(plain(), mask_path(), TrajectoryLikelihood(), unmask("sampled", 4), eval_block=unmask("max_prob"))

    checkpoints = L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, every_n_train_steps=1)
    fit(module(), tmp_path, enable_checkpointing=True, callbacks=[checkpoints])
    path = tmp_path / "ckpt" / "last.ckpt"
    ckpt = torch.load(path, weights_only=True, map_location="cpu")
    rollout = ckpt["hyper_parameters"]["rollout"]
    assert rollout.block.block_len == 4 and rollout.block.kernel.confidence == "sampled"
    assert isinstance(as_record(RolloutConfig, rollout, "rollout").build(mask_path()), BlockSampler)
    # LightningCLI saves the same setting as a mapping with the kernel's class_path: read back alike
    as_mapping = {
        "num_steps": 2,
        "block": {"block_len": 4, "kernel": {"class_path": "dflow.sampling.ConfidenceUnmaskKernel", "init_args": {}}},
    }
    rebuilt = as_record(RolloutConfig, as_mapping, "rollout").build(mask_path())
    assert isinstance(rebuilt, BlockSampler) and isinstance(rebuilt.kernel, ConfidenceUnmaskKernel)
    # resumed from step 1, the run ends where an uninterrupted one does
    again, straight = module(), module()
    trainer = fit(again, tmp_path, max_steps=2, ckpt_path=path)
    fit(straight, tmp_path / "straight", max_steps=2)
    assert trainer.global_step == 2 and again.rl_steps == 2
    for (name, a), b in zip(again.denoiser.state_dict().items(), straight.denoiser.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


# ---------------------------------------------------------------------------- shipped recipes
BLOCK_RECIPES = sorted(
    p
    for p in (ROOT / "recipes" / "text").glob("*.yaml")
    if not p.name.startswith("pretrain_") and "block" in yaml.safe_load(p.read_text())["model"]["init_args"]["rollout"]
)
TINY_BERT = {"model_type": "bert", "hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2}


def test_there_are_block_recipes_for_both_families():
    denoisers = {yaml.safe_load(p.read_text())["model"]["init_args"]["denoiser"]["class_path"] for p in BLOCK_RECIPES}
    assert {"dflow.lightning.PretrainedDenoiser", "dflow.lightning.DiffusionGemma"} <= denoisers
    likelihoods = {
        yaml.safe_load(p.read_text())["model"]["init_args"]["likelihood"]["class_path"] for p in BLOCK_RECIPES
    }
    assert {"dflow.rl.TrajectoryLikelihood", "dflow.rl.SpanLikelihood"} <= likelihoods


def _kernel(setting: dict):
    """The kernel a recipe's block setting names: (class name, init_args)."""
    kernel = setting["kernel"]
    return kernel["class_path"].rpartition(".")[2], kernel.get("init_args", {})


@pytest.mark.parametrize("recipe", BLOCK_RECIPES, ids=lambda p: p.stem)
def test_block_recipe_runs_one_step_with_its_own_denoiser(recipe, tmp_path, monkeypatch):
    """The recipe through the CLI, its own denoiser kept (a masked recipe's base is a pretraining run's
    output, so it is swapped for a tiny random BERT of the same family); the samplers are the recipe's."""
    config = yaml.safe_load(recipe.read_text())
    args = config["model"]["init_args"]
    if args["denoiser"]["class_path"].endswith("PretrainedDenoiser"):
        args["denoiser"] = {"class_path": "dflow.lightning.HFMaskedLM", "init_args": {"config": TINY_BERT}}
    copy = tmp_path / recipe.name
    copy.write_text(yaml.safe_dump(config))
    monkeypatch.chdir(tmp_path)
    cli = run_lightning_cli(
        [
            "fit",
            "--config",
            str(copy),
            "--trainer.max_steps=1",
            "--trainer.enable_progress_bar=false",
            "--trainer.enable_model_summary=false",
            "--data.init_args.prompts_per_step=2",
            "--model.init_args.evaluation.every_n_steps=1",
            "--model.init_args.evaluation.num_prompts=3",
            "--model.init_args.evaluation.samples_per_prompt=1",
            "--model.init_args.evaluation.num_grid_prompts=2",
        ]
    )
    module = cli.model
    assert cli.trainer.global_step == 1
    assert all(torch.isfinite(v) for v in cli.trainer.callback_metrics.values())
    assert [e["rl_step"] for e in module.eval_history] == [0, 1]  # before training and at the end
    for sampler, record in ((module.rollout_sampler, args["rollout"]), (module.eval_sampler, args["evaluation"])):
        name, init_args = _kernel(record["block"])
        assert isinstance(sampler, BlockSampler)
        assert sampler.block_len == record["block"]["block_len"] and sampler.steps_per_block == record["num_steps"]
        assert type(sampler.kernel).__name__ == name
        assert all(getattr(sampler.kernel, k) == v for k, v in init_args.items())
    if args["denoiser"]["class_path"].endswith("DiffusionGemma"):
        assert isinstance(module.denoiser, DiffusionGemmaDenoiser)
        assert module.denoiser.canvas_length == args["rollout"]["block"]["block_len"]


def test_diffusion_gemma_sft_recipe_trains_a_base_that_rl_and_dflow_sample_load(tmp_path, monkeypatch):
    """recipes/text/pretrain_diffusion_gemma.yaml (one block): one SFT step, its export loads with
    DiffusionGemma(path=...) for one RL step, and dflow sample reads its block evaluation sampler."""
    recipe = ROOT / "recipes" / "text" / "pretrain_diffusion_gemma.yaml"
    monkeypatch.chdir(tmp_path)
    dflow_main(
        [
            "fit",
            "--config",
            str(recipe),
            "--trainer.max_steps=1",
            "--trainer.val_check_interval=1",
            "--trainer.limit_val_batches=1",
            "--trainer.enable_progress_bar=false",
            "--trainer.enable_model_summary=false",
            "--data.init_args.batch_size=4",
            "--data.init_args.val_prompts=2",
            "--model.init_args.eval_sampler.num_steps=2",
        ]
    )
    export = tmp_path / "runs" / "text_pretrain_diffusion_gemma" / "export"
    meta = json.loads((export / "dflow_meta.json").read_text())
    assert meta["denoiser"] == "DiffusionGemmaDenoiser" and meta["eval"]["block"]["block_len"] == 16
    module = make(DiffusionGemma(path=str(export)), uniform_path(), TrajectoryLikelihood(), entropy(16))
    module.attach_task(TASK)
    assert module.denoiser.canvas_length == 16 and module.denoiser.data_token_ids == TASK.data_token_ids
    assert fit(module, tmp_path).global_step == 1
    out = tmp_path / "sample.json"
    dflow_main(["sample", "--checkpoint", str(export), "--prompts", "2", "--out", "s.png", "--json", str(out)])
    assert json.loads(out.read_text())["sampler"]["block"] == meta["eval"]["block"]


def test_sampled_confidence_can_score_minus_infinity_off_policy():
    """Why the multi-epoch tests above use confidence="max_prob": under updated weights a recorded
    step of ConfidenceUnmaskKernel(confidence="sampled") can have probability exactly 0 (an unrevealed
    position whose every value now ranks above the revealed draw), so its exact log-prob is -inf and
    a second inner epoch's gradient is not finite (the step is skipped as a fault)."""
    from dflow.sampling import BlockStep

    kernel, path = ConfidenceUnmaskKernel(confidence="sampled"), mask_path()
    x = torch.full((1, 2), 4)  # both positions masked
    x_s = torch.tensor([[0, 4]])  # position 0 revealed with value 0, position 1 still masked
    step = BlockStep(0, 2, torch.zeros(1), torch.full((1,), 0.5))
    # recorded policy: c* = p_0(0) = 0.95 and position 1 uniform (0.25 each): every value ranks below
    recorded = torch.tensor([[[4.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]]])
    assert math.isfinite(kernel.log_prob(path, recorded, x, x_s, step).sum().item())
    # updated policy: c* = p_0(0) = 0.1 < 0.25, so no value of position 1 ranks below: probability 0
    updated = torch.tensor([[[math.log(0.1), math.log(0.3), math.log(0.3), math.log(0.3)], [0.0, 0.0, 0.0, 0.0]]])
    assert kernel.log_prob(path, updated, x, x_s, step).sum().item() == -math.inf
