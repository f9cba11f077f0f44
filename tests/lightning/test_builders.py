"""Denoiser builders: sizes come from the task and the path; saved bases are checked at start-up."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from dflow.lightning import HFMaskedLM, PretrainedDenoiser, TransformerDenoiser, resolve_path
from dflow.lightning.describe import describe, instantiate
from dflow.models import DFlowConfig, DFlowTransformer
from dflow.paths import LinearScheduler, MaskSource, MixturePath, MixtureSource, PolynomialScheduler, UniformSource
from dflow.tasks import ShapesTask, TextTask

TINY = dict(hidden_size=16, num_layers=1, num_heads=2)


@pytest.fixture(scope="module")
def shapes() -> ShapesTask:
    return ShapesTask(height=8, width=8, pretrain_prompts_per_category=10, test_prompts_per_category=5)


def save_model(directory, **overrides) -> str:
    config = dict(vocab_size=7, mask_id=None, seq_len=64, prompt_len=8, prompt_vocab_size=25, **TINY)
    config.update(overrides)
    DFlowTransformer(DFlowConfig(**config)).save_pretrained(directory)
    return str(directory)


def test_transformer_sizes_come_from_task_and_path(shapes):
    for source, mask_id in ((UniformSource(7), None), (MaskSource(7), 7)):
        model = TransformerDenoiser(**TINY).build(shapes, MixturePath(source))
        c = model.config
        assert (c.vocab_size, c.mask_id, c.seq_len) == (7, mask_id, 64)
        assert (c.prompt_len, c.prompt_vocab_size) == (shapes.prompt_len, shapes.prompt_vocab_size)
        assert tuple(c.image_shape) == (8, 8)
        assert c.initializer_range == 0.02  # the transformers default unless the recipe asks
        x_t = source.sample((2, 64))
        assert model(x_t, torch.rand(2), shapes.encode_prompts(shapes.prompts("pretrain")[:2])).shape == (2, 64, 7)


def test_transformer_passes_the_initializer_range_through(shapes):
    model = TransformerDenoiser(**TINY, initializer_range=0.1).build(shapes, MixturePath(UniformSource(7)))
    assert model.config.initializer_range == 0.1
    assert 0.07 < model.token_embed.weight.std().item() < 0.13


def test_path_vocab_must_match_task(shapes):
    with pytest.raises(ValueError, match=r"vocab_size=5.*vocab_size=7"):
        TransformerDenoiser(**TINY).build(shapes, MixturePath(UniformSource(5)))


def test_pretrained_loads_a_matching_directory(shapes, tmp_path):
    model = PretrainedDenoiser(save_model(tmp_path / "base")).build(shapes, MixturePath(UniformSource(7)))
    assert isinstance(model, DFlowTransformer)


def test_pretrained_vocab_mismatch_names_both_values(shapes, tmp_path):
    path = save_model(tmp_path / "base", vocab_size=9)
    with pytest.raises(ValueError, match=r"vocab_size mismatch: model vocab_size=9 .* vocab_size=7"):
        PretrainedDenoiser(path).build(shapes, MixturePath(UniformSource(7)))


def test_pretrained_seq_len_mismatch_names_the_image_size(shapes, tmp_path):
    path = save_model(tmp_path / "base", seq_len=144)  # a 12x12 base used with an 8x8 task
    with pytest.raises(ValueError, match=r"model seq_len=144 .* image size 8x8 = seq_len=64"):
        PretrainedDenoiser(path).build(shapes, MixturePath(UniformSource(7)))


def test_mask_source_needs_a_mask_embedding(shapes, tmp_path):
    path = save_model(tmp_path / "base", mask_id=None)
    for source in (MaskSource(7), MixtureSource(7, 0.5)):
        with pytest.raises(ValueError, match=r"mask_id=7 .* mask_id=None"):
            PretrainedDenoiser(path).build(shapes, MixturePath(source))


def test_a_mask_base_may_serve_a_uniform_path(shapes, tmp_path):
    # the extra mask embedding row is simply never used
    path = save_model(tmp_path / "base", mask_id=7)
    assert PretrainedDenoiser(path).build(shapes, MixturePath(UniformSource(7))).config.mask_id == 7


def test_missing_directory_names_the_path(shapes, tmp_path):
    missing = str(tmp_path / "nowhere")
    with pytest.raises(ValueError, match=r"path='.*nowhere' is not a directory"):
        PretrainedDenoiser(missing).build(shapes, MixturePath(UniformSource(7)))


def test_resolve_path_finds_package_relative_names(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # not the repository
    found = resolve_path("dflow/lightning")
    assert found.is_dir() and (found / "builders.py").is_file()
    assert resolve_path("lightning") == found  # relative to the package itself
    (tmp_path / "local").mkdir()
    assert resolve_path("local") == tmp_path / "local" or os.path.samefile(resolve_path("local"), tmp_path / "local")


def test_hf_masked_lm_for_the_text_task():
    task = TextTask()
    path = MixturePath(MaskSource(task.vocab_size))
    config = {
        "model_type": "bert",
        "hidden_size": 16,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "intermediate_size": 32,
    }
    model = HFMaskedLM(config=config).build(task, path)
    batch = task.sample_data(3, torch.Generator().manual_seed(0))
    x_t = path.sample_xt(batch.x1, torch.full((3,), 0.5), torch.Generator().manual_seed(1))
    assert model(x_t, torch.full((3,), 0.5), batch.cond).shape == (3, task.seq_len, task.vocab_size)
    with pytest.raises(ValueError, match="exactly one of config and path"):
        HFMaskedLM()


def test_hf_masked_lm_needs_a_tokenizer_task(shapes):
    with pytest.raises(ValueError, match="tokenizer"):
        HFMaskedLM(config={"model_type": "bert"}).build(shapes, MixturePath(MaskSource(7)))


def test_describe_and_instantiate_round_trip_a_path():
    path = MixturePath(MixtureSource(7, 0.25), PolynomialScheduler(2.0), discretization="euler")
    again = instantiate(describe(path))
    assert repr(again) == repr(path)
    assert describe(MixturePath(UniformSource(3), LinearScheduler()))["init_args"]["source"]["init_args"] == {
        "vocab_size": 3
    }


def save_roberta_with_its_tokenizer(directory, extra_tokens=("1", "2", "3", "4", "_", "|")) -> None:
    """A tiny random RoBERTa and a word-level tokenizer numbered as RoBERTa numbers its specials
    (``<s>`` 0, ``<pad>`` 1, ``</s>`` 2, ``<unk>`` 3, ``<mask>`` last): its padding id is the text
    task's ``[MASK]`` id, the collision that once fed every masked cell the padding embedding."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, RobertaConfig, RobertaForMaskedLM

    vocab = {tok: i for i, tok in enumerate(("<s>", "<pad>", "</s>", "<unk>", "hello", *extra_tokens, "<mask>"))}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token="<s>",
        cls_token="<s>",
        eos_token="</s>",
        sep_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        mask_token="<mask>",
    )
    torch.manual_seed(0)
    config = RobertaConfig(
        vocab_size=len(vocab),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=64,
        pad_token_id=1,
    )
    RobertaForMaskedLM(config).save_pretrained(directory)
    tok.save_pretrained(directory)


def test_hf_masked_lm_from_a_folder_speaks_the_models_own_token_ids(tmp_path):
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    from dflow.lightning.export import model_meta, write_model_folder
    from dflow.sampling import SamplerConfig

    task = TextTask()
    path = MixturePath(MaskSource(task.vocab_size))
    save_roberta_with_its_tokenizer(tmp_path / "roberta")
    model_tok = AutoTokenizer.from_pretrained(tmp_path / "roberta")
    assert task.tokenizer.mask_token_id == model_tok.pad_token_id == 1  # the collision

    model = HFMaskedLM(path=str(tmp_path / "roberta")).build(task, path)
    digits = [model_tok.convert_tokens_to_ids(d) for d in ("1", "2", "3", "4")]
    assert model.data_token_ids.tolist() == digits
    assert int(model.state_to_token[-1]) == model_tok.mask_token_id
    table = model.prompt_token_ids.tolist()
    assert table[task.tokenizer.pad_token_id] == model_tok.pad_token_id
    assert table[task.tokenizer.convert_tokens_to_ids("|")] == model_tok.convert_tokens_to_ids("|")

    # the logits are the model's own, on the text as its tokenizer writes it
    batch = task.sample_data(2, torch.Generator().manual_seed(0), split="test")
    x_t = path.sample_xt(batch.x1, torch.full((2,), 0.5), torch.Generator().manual_seed(1))
    t = torch.full((2,), 0.5)
    mlm = AutoModelForMaskedLM.from_pretrained(tmp_path / "roberta").eval()
    model.eval()
    words = [task.tokenizer.convert_ids_to_tokens(row.tolist()) for row in batch.cond]
    by_hand = {"[PAD]": model_tok.pad_token}
    prompt_ids = torch.tensor([model_tok.convert_tokens_to_ids([by_hand.get(w, w) for w in row]) for row in words])
    cells = torch.tensor(digits + [model_tok.mask_token_id])[x_t]
    expected = mlm(input_ids=torch.cat([prompt_ids, cells], 1)).logits[:, task.prompt_len :, digits]
    assert (x_t == task.vocab_size).any()  # some cells are masked: the mask id matters
    torch.testing.assert_close(model(x_t, t, batch.cond), expected)

    # exported and rebuilt from dflow_meta.json, the translation travels with the folder
    meta = model_meta(model, describe(task), task, path, SamplerConfig(), {"rl": False})
    write_model_folder(model, meta, tmp_path / "export")
    again = PretrainedDenoiser(str(tmp_path / "export")).build(task, path).eval()
    torch.testing.assert_close(again(x_t, t, batch.cond), expected)


def test_hf_masked_lm_folder_tokenizer_errors_name_the_fix(tmp_path):
    task = TextTask()
    path = MixturePath(MaskSource(task.vocab_size))
    save_roberta_with_its_tokenizer(tmp_path / "no_bar", extra_tokens=("1", "2", "3", "4", "_"))
    with pytest.raises(ValueError, match=r"token '\|' \(id 6\) is not one token of the tokenizer of .*no_bar"):
        HFMaskedLM(path=str(tmp_path / "no_bar")).build(task, path)
    save_roberta_with_its_tokenizer(tmp_path / "bare")
    for name in os.listdir(tmp_path / "bare"):
        if "token" in name or name == "vocab.json":
            os.remove(tmp_path / "bare" / name)
    with pytest.raises(ValueError, match="holds no tokenizer.*tokenizer.save_pretrained.*tokenizer: task"):
        HFMaskedLM(path=str(tmp_path / "bare")).build(task, path)
    # tokenizer: task takes the folder's model on the task's ids, as before
    assert HFMaskedLM(path=str(tmp_path / "bare"), tokenizer="task").build(task, path).prompt_token_ids is None
    with pytest.raises(ValueError, match="tokenizer must be 'model' or 'task'"):
        HFMaskedLM(path="x", tokenizer="bert")


# ------------------------------------------------------------------ gradient checkpointing
TINY_BERT = {"model_type": "bert", "hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2}


def test_every_builder_passes_gradient_checkpointing_to_the_model(shapes, tmp_path):
    from dflow.lightning.export import model_meta, write_model_folder
    from dflow.models import is_gradient_checkpointing
    from dflow.sampling import SamplerConfig

    uniform = MixturePath(UniformSource(7))
    base = save_model(tmp_path / "base")
    text = TextTask()
    masked = MixturePath(MaskSource(text.vocab_size))
    bert = HFMaskedLM(config={**TINY_BERT, "intermediate_size": 32}).build(text, masked)
    write_model_folder(bert, model_meta(bert, describe(text), text, masked, SamplerConfig(), {}), tmp_path / "hf")
    save_roberta_with_its_tokenizer(tmp_path / "roberta")
    cases = [
        (lambda **kw: TransformerDenoiser(**TINY, **kw), shapes, uniform),
        (lambda **kw: PretrainedDenoiser(base, **kw), shapes, uniform),
        (lambda **kw: PretrainedDenoiser(str(tmp_path / "hf"), **kw), text, masked),
        (lambda **kw: HFMaskedLM(config={**TINY_BERT, "intermediate_size": 32}, **kw), text, masked),
        (lambda **kw: HFMaskedLM(path=str(tmp_path / "roberta"), **kw), text, masked),
    ]
    for make, task, path in cases:
        assert not is_gradient_checkpointing(make().build(task, path))  # off unless asked
        model = make(gradient_checkpointing=True).build(task, path)
        assert is_gradient_checkpointing(model), type(make())
        batch = task.sample_data(2, torch.Generator().manual_seed(0))
        model(path.sample_xt(batch.x1, torch.full((2,), 0.5)), torch.full((2,), 0.5), batch.cond).sum().backward()
    with pytest.raises(ValueError, match="gradient_checkpointing must be true or false, got gradient_checkpointing=1"):
        TransformerDenoiser(gradient_checkpointing=1)


def test_hf_builder_names_a_model_class_without_checkpointing():
    text = TextTask()
    albert = {
        "model_type": "albert",
        "embedding_size": 8,
        "hidden_size": 16,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "intermediate_size": 32,
    }
    masked = MixturePath(MaskSource(text.vocab_size))
    HFMaskedLM(config=albert).build(text, masked)  # fine without the flag
    with pytest.raises(ValueError, match="AlbertForMaskedLM does not support gradient checkpointing"):
        HFMaskedLM(config=albert, gradient_checkpointing=True).build(text, masked)


def recipe_with_checkpointing(recipe: str, directory) -> Path:
    """A copy of a shipped recipe whose denoiser says ``gradient_checkpointing: true`` in its YAML."""
    import yaml

    config = yaml.safe_load((Path(__file__).resolve().parents[2] / "recipes" / recipe).read_text())
    config["model"]["init_args"]["denoiser"].setdefault("init_args", {})["gradient_checkpointing"] = True
    out = Path(directory) / Path(recipe).name
    out.write_text(yaml.safe_dump(config))
    return out


def counting_checkpoints(monkeypatch) -> list[int]:
    """Count calls of the checkpoint function that transformers' enable hands to the models."""
    import transformers.modeling_utils

    calls = [0]
    original = transformers.modeling_utils.checkpoint

    def counted(*args, **kwargs):
        calls[0] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(transformers.modeling_utils, "checkpoint", counted)
    return calls


QUIET = ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false", "--trainer.max_steps=1"]


@pytest.mark.parametrize(
    ("recipe", "overrides"),
    [
        # PretrainModule: a fresh transformers BERT (HFMaskedLM) and a fresh DFlowTransformer
        (
            "text/pretrain_mask.yaml",
            [
                '--model.init_args.denoiser.init_args.config={"model_type": "bert", "hidden_size": 16, '
                '"num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32}'
            ],
        ),
        (
            "shapes/pretrain_uniform.yaml",
            [f"--model.init_args.denoiser.init_args.{k}={v}" for k, v in TINY.items()],
        ),
        # RLModule: the shipped shapes base (PretrainedDenoiser); its losses run in eval mode
        ("shapes/udm_grpo.yaml", ["--model.init_args.rollout.num_steps=4", "--data.init_args.prompts_per_step=2"]),
    ],
    ids=["pretrain-hf", "pretrain-transformer", "rl-pretrained"],
)
def test_gradient_checkpointing_from_a_recipe_yaml(recipe, overrides, tmp_path, monkeypatch):
    from dflow.lightning.cli import run_lightning_cli
    from dflow.models import is_gradient_checkpointing

    config = recipe_with_checkpointing(recipe, tmp_path)
    monkeypatch.chdir(tmp_path)  # the run folder lands here
    calls = counting_checkpoints(monkeypatch)
    evaluation = (
        ["--trainer.limit_val_batches=0"] if "pretrain" in recipe else ["--model.init_args.evaluation.every_n_steps=0"]
    )
    cli = run_lightning_cli(["fit", "--config", str(config), *QUIET, *evaluation, *overrides])
    assert cli.trainer.global_step == 1
    assert is_gradient_checkpointing(cli.model.denoiser)
    assert calls[0] > 0  # the training step's forward went through checkpointed blocks
    # a run setting, not a model setting: the exported folder loads as any other, checkpointing off
    folder = cli.model.export_pretrained(tmp_path / "export")
    for name in ("config.json", "dflow_meta.json"):
        assert "gradient_checkpointing" not in (folder / name).read_text()
    task, path = cli.datamodule.task, cli.model.path
    again = PretrainedDenoiser(str(folder)).build(task, path)
    assert not is_gradient_checkpointing(again)
    assert is_gradient_checkpointing(PretrainedDenoiser(str(folder), gradient_checkpointing=True).build(task, path))
