"""PretrainModule: finite loss, CFG dropout rate, the CE carry-over rule, gkl, export round trip, resume."""

from __future__ import annotations

import json
import math

import lightning as L
import pytest
import torch

from dflow.lightning import (
    CrossEntropyLoss,
    ExportPretrained,
    GeneralizedKLLoss,
    PretrainedDenoiser,
    PretrainModule,
    TaskDataModule,
    TransformerDenoiser,
)
from dflow.paths import MaskSource, MixturePath, MixtureSource, UniformSource
from dflow.tasks import ShapesTask

TINY = dict(hidden_size=16, num_layers=1, num_heads=2)


@pytest.fixture(scope="module")
def task() -> ShapesTask:
    return ShapesTask(height=8, width=8, pretrain_prompts_per_category=10, test_prompts_per_category=5)


def make_module(task, source=None, **kwargs) -> PretrainModule:
    torch.manual_seed(0)
    module = PretrainModule(TransformerDenoiser(**TINY), MixturePath(source or UniformSource(7)), **kwargs)
    module.bind(task)
    return module


@pytest.mark.parametrize("source", [UniformSource(7), MaskSource(7), MixtureSource(7, 0.5)], ids=repr)
@pytest.mark.parametrize("loss", [CrossEntropyLoss(), GeneralizedKLLoss()], ids=lambda obj: type(obj).__name__)
def test_one_step_has_a_finite_loss_and_gradient(task, source, loss):
    module = make_module(task, source, loss=loss, t_max=0.99)
    batch = task.sample_data(8, torch.Generator().manual_seed(0))
    value = module.loss_on(batch.x1, batch.cond, torch.Generator().manual_seed(1))
    value.backward()
    assert value.ndim == 0 and torch.isfinite(value)
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_cond_dropout_zeroes_whole_rows_at_the_configured_rate(task):
    module = make_module(task, cond_dropout=0.3)
    cond = torch.randint(1, 20, (4000, 8))
    out = module.drop_cond(cond, torch.Generator().manual_seed(0))
    zeroed = (out == 0).all(-1)
    assert torch.equal(out[~zeroed], cond[~zeroed])  # other rows untouched
    # Bernoulli(0.3) over 4000 rows: std = sqrt(0.3 * 0.7 / 4000) = 0.0072; allow 4 std
    assert abs(zeroed.float().mean().item() - 0.3) < 4 * math.sqrt(0.3 * 0.7 / 4000)
    assert torch.equal(make_module(task, cond_dropout=0.0).drop_cond(cond), cond)


def test_cross_entropy_ignores_carry_over_tokens_of_a_mask_source():
    # V = 3, mask id 3. Position 0 is visible (clean, carried over), positions 1 and 2 are masked.
    path = MixturePath(MaskSource(3))
    x1 = torch.tensor([[0, 1, 2]])
    x_t = torch.tensor([[0, 3, 3]])
    logits = torch.tensor(
        [
            [
                [-50.0, 50.0, 0.0],  # position 0: confidently wrong, must not count
                [0.0, 0.0, 0.0],  # position 1: p(1) = 1/3 -> CE = log 3
                [0.0, 0.0, math.log(2.0)],
            ]
        ]
    )  # position 2: p(2) = 2/4 -> CE = log 2
    loss = CrossEntropyLoss()(logits, x1, x_t, torch.tensor([0.5]), path)
    assert loss.item() == pytest.approx((math.log(3.0) + math.log(2.0)) / 2, abs=1e-6)
    # with a uniform source any token may be noise, so position 0 counts (CE = 100 + log(1 + e^-50))
    uniform = CrossEntropyLoss()(
        logits, x1, torch.tensor([[0, 1, 1]]), torch.tensor([0.5]), MixturePath(UniformSource(3))
    )
    assert uniform.item() == pytest.approx((100.0 + math.log(3.0) + math.log(2.0)) / 3, abs=1e-4)


def test_gkl_loss_is_the_mean_of_path_generalized_kl(task):
    path = MixturePath(MaskSource(7))
    module = make_module(task, MaskSource(7), loss=GeneralizedKLLoss(), cond_dropout=0.0, t_min=0.1, t_max=0.9)
    batch = task.sample_data(4, torch.Generator().manual_seed(0))
    got = module.loss_on(batch.x1, batch.cond, torch.Generator().manual_seed(7))
    # replay the same draws by hand
    g = torch.Generator().manual_seed(7)
    t = 0.1 + 0.8 * torch.rand(4, generator=g)
    x_t = path.sample_xt(batch.x1, t, g)
    torch.rand(4, generator=g)  # the dropout draw (rate 0 keeps every row)
    want = path.generalized_kl(module(x_t, t, batch.cond), batch.x1, x_t, t).mean()
    assert got.item() == pytest.approx(want.item(), rel=1e-6)


def test_time_skew_moves_training_times_towards_the_data(task):
    # t_skew = 2: t = u ** (1/2) ~ Beta(2, 1), mean 2/3, variance 1/18; 20000 draws: std of the mean 0.0017
    t = make_module(task, t_skew=2.0).sample_time(20000, torch.Generator().manual_seed(0))
    assert abs(t.mean().item() - 2 / 3) < 0.01
    assert abs(make_module(task).sample_time(20000, torch.Generator().manual_seed(0)).mean().item() - 0.5) < 0.01
    t = make_module(task, t_min=0.2, t_max=0.6).sample_time(1000)
    assert 0.2 <= t.min().item() and t.max().item() < 0.6


def test_bind_rejects_a_path_of_another_vocabulary(task):
    module = PretrainModule(TransformerDenoiser(**TINY), MixturePath(UniformSource(5)))
    with pytest.raises(ValueError, match=r"vocab_size=5 .* vocab_size=7"):
        module.bind(task)


def test_bad_arguments_name_the_field():
    path = MixturePath(UniformSource(7))
    with pytest.raises(ValueError, match="cond_dropout"):
        PretrainModule(TransformerDenoiser(), path, cond_dropout=1.5)
    with pytest.raises(ValueError, match="t_min"):
        PretrainModule(TransformerDenoiser(), path, t_min=0.5, t_max=0.5)
    with pytest.raises(ValueError, match="denoiser"):
        PretrainModule("transformer", path)


def test_learning_rate_warms_up_then_decays_to_the_floor(task):
    module = make_module(task, warmup_steps=10, min_lr_ratio=0.1)
    factor = module._lr_factor(110)
    assert factor(0) == pytest.approx(0.1) and factor(9) == pytest.approx(1.0)
    assert factor(60) == pytest.approx(0.55)  # half-way through the cosine
    assert factor(110) == pytest.approx(0.1) and factor(500) == pytest.approx(0.1)


@pytest.mark.parametrize("source", [UniformSource(7), MaskSource(7)], ids=repr)
def test_export_round_trip_gives_identical_logits(task, source, tmp_path):
    module = make_module(task, source)
    out = module.export_pretrained(tmp_path / "base")
    meta = json.loads((out / "dflow_meta.json").read_text())
    assert meta["task_name"] == "shapes" and meta["denoiser"] == "DFlowTransformer"
    assert meta["path"]["init_args"]["source"]["class_path"].endswith(type(source).__name__)
    loaded = PretrainedDenoiser(str(out)).build(task, MixturePath(source)).eval()
    x_t = source.sample((3, task.seq_len), generator=torch.Generator().manual_seed(0))
    t, cond = torch.rand(3), task.encode_prompts(task.prompts("test")[:3])
    module.denoiser.eval()
    with torch.no_grad():
        assert torch.equal(loaded(x_t, t, cond), module(x_t, t, cond))


def test_export_round_trip_of_a_masked_lm(tmp_path):
    from dflow.lightning import HFMaskedLM
    from dflow.tasks import TextTask

    task = TextTask()
    path = MixturePath(MaskSource(task.vocab_size))
    config = {
        "model_type": "bert",
        "hidden_size": 16,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "intermediate_size": 32,
    }
    module = PretrainModule(HFMaskedLM(config=config), path)
    module.bind(task)
    out = module.export_pretrained(tmp_path / "text")
    loaded = PretrainedDenoiser(str(out)).build(task, path).eval()
    batch = task.sample_data(2, torch.Generator().manual_seed(0))
    x_t = path.sample_xt(batch.x1, torch.full((2,), 0.3), torch.Generator().manual_seed(1))
    module.denoiser.eval()
    with torch.no_grad():
        assert torch.equal(loaded(x_t, torch.zeros(2), batch.cond), module(x_t, torch.zeros(2), batch.cond))


def fit(task, root, max_steps: int, ckpt_path=None) -> PretrainModule:
    module = PretrainModule(TransformerDenoiser(**TINY), MixturePath(UniformSource(7)), warmup_steps=2, grid_samples=4)
    trainer = L.Trainer(
        max_steps=max_steps,
        default_root_dir=root,
        logger=False,
        callbacks=[
            L.pytorch.callbacks.ModelCheckpoint(dirpath=root / "ckpt", save_last=True, every_n_train_steps=1),
            ExportPretrained(str(root / "export")),
        ],
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
    )
    torch.manual_seed(0)
    trainer.fit(module, TaskDataModule(task, batch_size=4, seed=0), ckpt_path=ckpt_path)
    return module


def test_resumed_run_matches_an_uninterrupted_one(task, tmp_path):
    straight = fit(task, tmp_path / "a", max_steps=4)
    fit(task, tmp_path / "b", max_steps=2)
    resumed = fit(task, tmp_path / "b", max_steps=4, ckpt_path=str(tmp_path / "b" / "ckpt" / "last.ckpt"))
    for (name, p), q in zip(
        straight.denoiser.state_dict().items(), resumed.denoiser.state_dict().values(), strict=True
    ):
        assert torch.equal(p, q), name
    assert (tmp_path / "b" / "export" / "model.safetensors").is_file()
