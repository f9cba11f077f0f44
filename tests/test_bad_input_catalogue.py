"""The bad-input catalogue: what a researcher sees for each wrong configuration or input.

One table, :data:`CASES`, and one parametrised test. Each case builds or calls the library with one
bad value and must fail with exactly ``error`` (``ValueError`` unless the contract says otherwise)
whose message matches ``field_and_value``: a regex naming the offending field AND the value given.
Nothing here trains a real model: all checks happen at construction or start-up, and the few cases
that need a run use a one-layer width-16 transformer on an 8x8 shapes task for one RL step.

Recipe / CLI errors: jsonargparse does not raise on a key that does not exist, a value of the wrong
type, or a recipe file that is missing; it prints the usage and ``error: ...`` on stderr and raises
``SystemExit(2)``. Those cases expect ``SystemExit``; the helper :func:`cli` keeps what was printed
on the exception (``err.printed``) so the message is checked like any other, and the test also
checks the exit code is 2. A value that parses but that a class rejects (``kl.init_args.beta=-1``)
is our ``ValueError``, wrapped by jsonargparse in a longer message that quotes ours.

``python tests/test_bad_input_catalogue.py`` prints the tables of docs/troubleshooting.md from the
messages the cases actually raise.
"""

from __future__ import annotations

import contextlib
import functools
import html
import io
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import lightning as L
import pytest
import torch
import yaml

from dflow.cli import main as dflow_main
from dflow.cli import run_lightning_cli
from dflow.lightning import (
    DiffusionGemma,
    HFMaskedLM,
    PretrainedDenoiser,
    PretrainModule,
    PromptDataModule,
    RewardSpec,
    RLModule,
    TransformerDenoiser,
)
from dflow.lightning.precision import check_precision
from dflow.lightning.reliability import CHECKPOINT_PATH_KEY, check_state_dict, load_checkpoint_file
from dflow.models import DFlowConfig, DFlowTransformer, HFMaskedLMDenoiser
from dflow.models.lora import LoRAConfig
from dflow.paths import MaskSource, MetricPath, MixturePath, MixtureSource, PolynomialScheduler, UniformSource
from dflow.rewards import WeightedRewards, load_reward
from dflow.rl import (
    EPG,
    AdvantageInput,
    CoupledELBOLikelihood,
    ELBOLikelihood,
    ForwardReconstruction,
    GroupAdvantage,
    GroupSoftmaxWeights,
    IntermediateActionLikelihood,
    KLPenalty,
    MeanFieldLikelihood,
    SampleSumAggregation,
    SandwichedBounds,
    SandwichedObjective,
    SpanLikelihood,
    StepWindow,
    StepwiseGainAdvantage,
    TrajectoryLikelihood,
)
from dflow.sampling import BlockConfig, ConfidenceUnmaskKernel, EntropyBoundKernel, Sampler, SamplerConfig
from dflow.tasks import CountdownTask, ShapesTask, TextTask, get_task
from dflow.testbed import exact_distribution
from tests.conftest import rl_settings
from tests.models.tiny_dllm import write_tiny_dllm

pytestmark = pytest.mark.usefixtures("single_thread")  # tiny tensors: a second thread only contends

ROOT = Path(__file__).resolve().parents[1]
RL_RECIPE = ROOT / "recipes" / "shapes" / "elbo_epg.yaml"
PRETRAIN_RECIPE = ROOT / "recipes" / "shapes" / "pretrain_uniform.yaml"
TINY = dict(hidden_size=16, num_layers=1, num_heads=2)
AREAS = ("paths", "sampler", "models", "tasks", "rewards", "rl", "recipes", "checkpoints")
TINY_CLI = [f"--model.init_args.denoiser.init_args.{k}={v}" for k, v in TINY.items()]


@dataclass(frozen=True)
class Case:
    """One bad input.

    Attributes:
        id: short name (pytest id and the row key in docs/troubleshooting.md).
        area: paths, sampler, models, tasks, rewards, rl, recipes, checkpoints.
        make_error: called with a scratch directory (also the working directory); must raise.
        field_and_value: regex the message must match, naming the field and the bad value.
        error: the exact exception type expected.
        fix: what the researcher should change (for the docs table).
    """

    id: str
    area: str
    make_error: Callable[[Path], object]
    field_and_value: str
    error: type[BaseException] = ValueError
    fix: str = ""


# ---------------------------------------------------------------------------- small helpers
SMALL_COUNTDOWN = {"test_size": 20, "pretrain_size": 300, "rl_size": 300}


def words_tokenizer(tmp: Path) -> str:
    """A word-level tokenizer folder with digits but no operators and no chat template."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    known = ["<pad>", "<mask>", "<eos>", "<unk>", "Numbers:", "Target:", *"0123456789"]
    core = Tokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(known)}, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token="<pad>", mask_token="<mask>", eos_token="<eos>", unk_token="<unk>"
    )
    tok.save_pretrained(tmp / "words")
    return str(tmp / "words")


@functools.cache
def shapes() -> ShapesTask:
    """An 8x8 shapes task (V = 7, L = 64) with a few prompts: cheap to build and to roll out."""
    return ShapesTask(height=8, width=8, pretrain_prompts_per_category=4, test_prompts_per_category=2)


def uniform7() -> MixturePath:
    return MixturePath(UniformSource(7))


def _flat_recipe(tmp: Path) -> Path:
    """An RL recipe written with a flat key of earlier versions (``eval_every_n_steps``)."""
    config = yaml.safe_load(RL_RECIPE.read_text())
    config["model"]["init_args"]["eval_every_n_steps"] = 10
    out = tmp / "flat.yaml"
    out.write_text(yaml.safe_dump(config))
    return out


def rl_module(**overrides) -> RLModule:
    """A valid tiny RLModule with ``overrides`` applied (only the overridden argument is bad)."""
    args = dict(
        denoiser=TransformerDenoiser(**TINY),
        path=uniform7(),
        likelihood=ELBOLikelihood(num_timesteps=2, grid_steps=4),
        objective=EPG(),
        rollout=SamplerConfig(num_steps=2),
        evaluation=SamplerConfig(num_steps=2),
        group_size=2,
        eval_every_n_steps=0,
    )
    args.update(overrides)
    return RLModule(**rl_settings(**args))


def one_rl_step(module: RLModule, root: Path) -> None:
    """Train ``module`` for one RL step on the 8x8 shapes task (1 prompt x G rollouts)."""
    trainer = L.Trainer(
        max_steps=1,
        default_root_dir=root,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        devices=1,
    )
    trainer.fit(module, datamodule=PromptDataModule(shapes(), prompts_per_step=1))


def cli(*args: str) -> None:
    """Run ``dflow fit|validate ...`` with its printing captured; a ``SystemExit`` carries the text as
    ``.printed`` (jsonargparse reports parse errors on stderr, not in the exception)."""
    buffer = io.StringIO()
    try:
        with contextlib.redirect_stderr(buffer), contextlib.redirect_stdout(buffer):
            run_lightning_cli(list(args))
    except SystemExit as err:
        err.printed = buffer.getvalue()
        raise


def resume_from(ckpt_path) -> None:
    """``dflow fit`` of the tiny uniform shapes pretraining recipe, resuming from ``ckpt_path``."""
    cli(
        "fit",
        "--config",
        str(PRETRAIN_RECIPE),
        *TINY_CLI,
        "--trainer.max_steps=1",
        "--trainer.enable_progress_bar=false",
        "--ckpt_path",
        str(ckpt_path),
    )


def message(err: BaseException) -> str:
    return getattr(err, "printed", None) or str(err)


def x1_of(value: int, n: int = 1) -> torch.Tensor:
    return torch.full((n, shapes().seq_len), value, dtype=torch.long)


def prompts(n: int = 2):
    return shapes().prompts("rl")[:n]


def nan_reward(x1, prompts):
    return torch.full((len(prompts),), float("nan"))


def scalar_reward(x1, prompts):
    return torch.tensor(0.5)


def list_with_none_reward(x1, prompts):
    return [1.0] + [None] * (len(prompts) - 1)


class TargetReward:
    def __init__(self, target: int) -> None:
        self.target = target

    def __call__(self, x1, prompts):
        return (x1 == self.target).float().mean(-1)


def bare_bert_folder(tmp: Path) -> Path:
    """A tiny random BERT saved without its tokenizer."""
    from transformers import BertConfig, BertForMaskedLM

    config = BertConfig(vocab_size=16, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16)
    BertForMaskedLM(config).save_pretrained(tmp / "bert")
    return tmp / "bert"


def failing_reward(x1, prompts):
    raise RuntimeError("verifier crashed")


def save_base(directory: Path, **overrides) -> str:
    """A tiny saved ``DFlowTransformer`` for the 8x8 shapes task, with ``overrides`` in its config."""
    task = shapes()
    config = dict(
        vocab_size=7, seq_len=task.seq_len, prompt_len=task.prompt_len, prompt_vocab_size=task.prompt_vocab_size, **TINY
    )
    config.update(overrides)
    DFlowTransformer(DFlowConfig(**config)).save_pretrained(directory)
    return str(directory)


def truncated_checkpoint(tmp: Path) -> Path:
    good = tmp / "good.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(64)}, "global_step": 3}, good)
    bad = tmp / "truncated.ckpt"
    bad.write_bytes(good.read_bytes()[:200])  # a save killed half-way
    return bad


def plain_torch_file(tmp: Path) -> Path:
    file = tmp / "weights.pt"
    torch.save({"w": torch.zeros(3)}, file)  # model weights, not a Lightning checkpoint
    return file


def bf16_on_an_old_gpu() -> None:
    """What an RL run checks at start-up on a GPU without bfloat16 (a V100, a T4), faked on any machine."""
    with (
        mock.patch("torch.cuda.is_bf16_supported", return_value=False),
        mock.patch("torch.cuda.is_available", return_value=False),
    ):
        check_precision("bf16-true", torch.device("cuda", 0))


def tiny_bert(**kwargs) -> HFMaskedLMDenoiser:
    config = dict(
        model_type="bert",
        vocab_size=16,
        hidden_size=8,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=16,
        max_position_embeddings=16,
    )
    return HFMaskedLMDenoiser(config, **kwargs)


def text_build(builder: HFMaskedLM) -> object:
    """``builder`` built for the text task on a mask path (V = 4, prompt_len 19, seq_len 16)."""
    return builder.build(TextTask(), MixturePath(MaskSource(TextTask().vocab_size)))


def gpt2_folder(tmp: Path) -> Path:
    """A tiny random GPT-2 (a causal LM) saved with save_pretrained."""
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(vocab_size=16, n_embd=8, n_layer=1, n_head=2, n_positions=64)
    GPT2LMHeadModel(config).save_pretrained(tmp / "gpt2")
    return tmp / "gpt2"


def dllm_pointing_elsewhere(tmp: Path) -> Path:
    """A custom-code folder whose auto_map names code in another hub repository."""
    folder = write_tiny_dllm(tmp / "elsewhere", tokenizer=False)
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"]["AutoModel"] = "GSAI-ML/LLaDA-8B-Instruct--modeling_llada.LLaDAModelLM"
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def dllm_without_bar(tmp: Path) -> Path:
    """A custom-code folder whose tokenizer lacks the text task's '|' token."""
    folder = write_tiny_dllm(tmp / "no_bar")
    vocab = folder / "tokenizer.json"
    vocab.write_text(vocab.read_text().replace('"|"', '"bar"'))
    return folder


def sample_path():
    return MixturePath(UniformSource(4))


def rollout_with(policy):
    return Sampler(sample_path(), num_steps=2).rollout(policy, batch_size=2, seq_len=3)


TINY_GEMMA = {
    "hidden_size": 16,
    "head_dim": 8,
    "global_head_dim": 8,
    "intermediate_size": 32,
    "moe_intermediate_size": 16,
}


def gemma(canvas: int = 4) -> DiffusionGemma:
    """A tiny random DiffusionGemma builder over the text task's tokenizer."""
    return DiffusionGemma(config={"canvas_length": canvas, "text_config": TINY_GEMMA})


def block_module(rollout_block: BlockConfig | None, path=None, evaluation_block=None, **overrides) -> RLModule:
    """A tiny RLModule on the text task (V = 4, L = 16) with block rollouts, its task attached (the
    block checks that need the task and the denoiser run there)."""
    args = dict(
        denoiser=TransformerDenoiser(**TINY),
        path=path if path is not None else MixturePath(MaskSource(4)),
        likelihood=TrajectoryLikelihood(),
        objective=EPG(),
        rollout=SamplerConfig(num_steps=4, block=rollout_block),
        evaluation=SamplerConfig(num_steps=4, block=evaluation_block),
        group_size=2,
        eval_every_n_steps=0,
    )
    args.update(overrides)
    module = RLModule(**rl_settings(**args))
    module.attach_task(TextTask())
    return module


# ---------------------------------------------------------------------------- the catalogue
CASES: list[Case] = [
    # ---- paths
    Case(
        "path-unknown-discretization",
        "paths",
        lambda tmp: MixturePath(UniformSource(4), discretization="midpoint"),
        r"discretization='midpoint'",
        fix="use `discretization: exact` (default) or `euler`",
    ),
    Case(
        "source-mask-prob-out-of-range",
        "paths",
        lambda tmp: MixtureSource(4, mask_prob=1.5),
        r"mask_prob=1\.5",
        fix="`mask_prob` is a probability in [0, 1]; 1 is a pure mask source (use MaskSource)",
    ),
    Case(
        "source-vocab-zero",
        "paths",
        lambda tmp: UniformSource(0),
        r"vocab_size=0",
        fix="`vocab_size` is V, the task's number of data values (>= 1)",
    ),
    Case(
        "scheduler-nonpositive-exponent",
        "paths",
        lambda tmp: PolynomialScheduler(n=0),
        r"n=0",
        fix="PolynomialScheduler needs n > 0 (`kappa_t = t**n`; n = 1 is linear)",
    ),
    Case(
        "sample-xt-time-out-of-range",
        "paths",
        lambda tmp: sample_path().sample_xt(torch.zeros(2, 3, dtype=torch.long), torch.tensor([0.5, 1.5])),
        r"\bt must lie in \[0, 1\], got values \[0\.5, 1\.5\]",
        fix="times are in [0, 1]: 0 is noise, 1 is data",
    ),
    Case(
        "sample-xt-time-wrong-shape",
        "paths",
        lambda tmp: sample_path().sample_xt(torch.zeros(2, 3, dtype=torch.long), torch.tensor(0.5)),
        r"\bt must be a float tensor of shape \[B\]=\(2,\), got \(\)",
        fix="pass one time per sequence: `torch.full((B,), t)`",
    ),
    Case(
        "sample-xt-data-out-of-range",
        "paths",
        lambda tmp: sample_path().sample_xt(torch.tensor([[0, 1, 4]]), torch.tensor([0.5])),
        r"x1 values must be in \[0, 4\), got range \[0, 4\]",
        fix="x1 holds data values 0..V-1 (never the mask id V)",
    ),
    Case(
        "step-kernel-s-not-after-t",
        "paths",
        lambda tmp: sample_path().step_kernel(
            torch.full((1, 3, 4), 0.25), torch.zeros(1, 3, dtype=torch.long), torch.tensor([0.5]), torch.tensor([0.5])
        ),
        r"s > t, got t=0\.5 s=0\.5",
        fix="a step goes forward in time: s > t",
    ),
    Case(
        "step-kernel-posterior-width",
        "paths",
        lambda tmp: sample_path().step_kernel(
            torch.full((1, 3, 5), 0.2), torch.zeros(1, 3, dtype=torch.long), torch.tensor([0.2]), torch.tensor([0.5])
        ),
        r"posterior width must equal the source's vocabulary V=4, got 5",
        fix="the posterior has V columns (no column for the mask id)",
    ),
    Case(
        "metric-path-equal-embeddings",
        "paths",
        lambda tmp: MetricPath(embedding=torch.tensor([[0.0, 0.0], [1.0, 1.0], [0.0, 0.0]])),
        r"distance\[0, 2\]=0",
        fix="every data value needs its own embedding (distance > 0 between distinct values)",
    ),
    # ---- sampler
    Case(
        "sampler-zero-steps",
        "sampler",
        lambda tmp: Sampler(sample_path(), num_steps=0),
        r"num_steps=0",
        fix="`num_steps` >= 1",
    ),
    Case(
        "sampler-zero-temperature",
        "sampler",
        lambda tmp: Sampler(sample_path(), temperature=0),
        r"temperature=0",
        fix="temperature > 0; for greedy decoding use a small value such as 1e-3",
    ),
    Case(
        "sampler-unknown-time-grid",
        "sampler",
        lambda tmp: Sampler(sample_path(), time_grid="linear"),
        r"time_grid='linear'",
        fix="`time_grid` is uniform, shifted or cosine",
    ),
    Case(
        "sampler-shifted-grid-bad-shift",
        "sampler",
        lambda tmp: Sampler(sample_path(), time_grid="shifted", shift=0.0),
        r"shift=0\.0",
        fix="`shift` > 0 (1 is uniform, > 1 spends more steps near noise)",
    ),
    Case(
        "recipe-sampler-config-zero-steps",
        "sampler",
        lambda tmp: rl_module(rollout=SamplerConfig(num_steps=0)),
        r"num_steps=0",
        fix="`rollout.num_steps` / `evaluation.num_steps` >= 1",
    ),
    Case(
        "policy-returns-wrong-shape",
        "sampler",
        lambda tmp: rollout_with(lambda x, t, c: torch.zeros(*x.shape, 5)),
        r"logits of shape \[B, L, V\]=\(2, 3, 4\), got \(2, 3, 5\)",
        fix="the denoiser must return V logits per position for the path's source (check vocab_size)",
    ),
    Case(
        "rollout-zero-batch",
        "sampler",
        lambda tmp: Sampler(sample_path(), num_steps=2).rollout(lambda x, t, c: x, batch_size=0, seq_len=3),
        r"batch_size=0",
        fix="`batch_size` >= 1",
    ),
    # ---- models
    Case(
        "config-mask-id-not-vocab",
        "models",
        lambda tmp: DFlowConfig(vocab_size=4, mask_id=5),
        r"mask_id .*vocab_size \(4\), got 5",
        fix="`mask_id` is None (no mask state) or exactly vocab_size",
    ),
    Case(
        "config-heads-do-not-divide-hidden",
        "models",
        lambda tmp: TransformerDenoiser(hidden_size=20, num_heads=3).build(shapes(), uniform7()),
        r"hidden_size \(20\) must be divisible by num_heads \(3\)",
        fix="pick num_heads dividing hidden_size (e.g. 128 / 4)",
    ),
    Case(
        "config-image-shape-mismatch",
        "models",
        lambda tmp: DFlowConfig(seq_len=64, image_shape=(8, 9)),
        r"image_shape \(8, 9\) has H \* W = 72, which must equal seq_len \(64\)",
        fix="image_shape is (H, W) with H * W = seq_len, or None",
    ),
    Case(
        "mask-id-into-model-without-mask",
        "models",
        lambda tmp: DFlowTransformer(DFlowConfig(vocab_size=4, seq_len=3, **TINY))(
            torch.tensor([[0, 4, 1]]), torch.zeros(1)
        ),
        r"x_t values must be in \[0, 4\) \(mask_id=None\), got min 0 and max 4",
        fix="a mask source needs a base trained with one (mask_id = V); a uniform-source base has no mask embedding",
    ),
    Case(
        "hf-duplicated-data-ids",
        "models",
        lambda tmp: tiny_bert(data_token_ids=[5, 6, 5], mask_token_id=4),
        r"data_token_ids must be unique, got \[5, 6, 5\]",
        fix="each data value needs its own tokenizer id",
    ),
    Case(
        "hf-model-directory-missing",
        "models",
        lambda tmp: HFMaskedLMDenoiser(str(tmp / "no_bert"), data_token_ids=[5, 6], mask_token_id=4),
        r"model path '.*no_bert' is not a directory",
        error=FileNotFoundError,
        fix="point `model` / `HFMaskedLM.path` at a local save_pretrained directory (the hub is never used)",
    ),
    Case(
        "pretrained-directory-missing",
        "models",
        lambda tmp: PretrainedDenoiser("dflow/assets/no_such_base").build(shapes(), uniform7()),
        r"path='dflow/assets/no_such_base' is not a directory",
        fix="export a base first (`make base-models`, or PretrainModule + ExportPretrained) or fix the path",
    ),
    Case(
        "pretrained-directory-not-a-model",
        "models",
        lambda tmp: PretrainedDenoiser(str(tmp)).build(shapes(), uniform7()),
        r"path='.*' has no config.json",
        fix="the directory must hold config.json + model.safetensors from save_pretrained / export_pretrained",
    ),
    Case(
        "pretrained-base-wrong-image-size",
        "models",
        lambda tmp: PretrainedDenoiser(save_base(tmp / "base12", seq_len=144)).build(shapes(), uniform7()),
        r"model seq_len=144 .*seq_len=64",
        fix="use the base trained for this task size, or set the task's height/width to the base's",
    ),
    Case(
        "pretrained-uniform-base-with-mask-source",
        "models",
        lambda tmp: PretrainedDenoiser(save_base(tmp / "base_u")).build(shapes(), MixturePath(MaskSource(7))),
        r"mask_id=7 .*mask_id=None",
        fix="a mask-source path needs a base trained with a mask source (recipes/*/pretrain_mask.yaml)",
    ),
    Case(
        "hf-masked-lm-folder-without-tokenizer",
        "models",
        lambda tmp: HFMaskedLM(path=str(bare_bert_folder(tmp))).build(
            TextTask(), MixturePath(MaskSource(TextTask().vocab_size))
        ),
        r"holds no tokenizer .*tokenizer: task",
        fix="save the model's tokenizer beside it, or `tokenizer: task` for a model trained on the task's ids",
    ),
    Case(
        "hf-model-without-gradient-checkpointing",
        "models",
        lambda tmp: HFMaskedLM(
            config={"model_type": "albert", "hidden_size": 8, "num_attention_heads": 2, "intermediate_size": 16},
            gradient_checkpointing=True,
        ).build(TextTask(), MixturePath(MaskSource(TextTask().vocab_size))),
        r"gradient_checkpointing=True, but AlbertForMaskedLM does not support gradient checkpointing",
        fix="set `gradient_checkpointing: false` for this model (or lower `minibatch_size` to save memory)",
    ),
    Case(
        "custom-code-without-trust-remote-code",
        "models",
        lambda tmp: text_build(HFMaskedLM(path=str(write_tiny_dllm(tmp / "llada")))),
        r"'.*llada' ships its own modelling code .*AutoModel -> modeling_tinydllm\.TinyDLLMModelLM.*"
        r"model\.init_args\.denoiser\.init_args\.trust_remote_code: true",
        fix="read the folder's .py files, then set `trust_remote_code: true` on the denoiser builder",
    ),
    Case(
        "custom-code-auto-map-in-another-repository",
        "models",
        lambda tmp: text_build(HFMaskedLM(path=str(dllm_pointing_elsewhere(tmp)), trust_remote_code=True)),
        r"auto_map\.AutoModel='GSAI-ML/LLaDA-8B-Instruct--modeling_llada\.LLaDAModelLM' .*another repository",
        fix="copy the modelling file into the folder and write the auto_map entry as `module.Class`",
    ),
    Case(
        "hf-folder-holds-a-causal-lm",
        "models",
        lambda tmp: HFMaskedLMDenoiser(gpt2_folder(tmp), data_token_ids=[5, 6], mask_token_id=4),
        r"holds GPT2LMHeadModel \(model_type='gpt2'\), which is not a masked LM.*supported: masked LMs",
        fix="point `path` at a masked LM (BERT, RoBERTa, ...) or a bidirectional dLLM (LLaDA, Dream)",
    ),
    Case(
        "custom-code-causal-lm",
        "models",
        lambda tmp: text_build(
            HFMaskedLM(
                path=str(write_tiny_dllm(tmp / "causal", auto_class="AutoModelForCausalLM", causal=True)),
                trust_remote_code=True,
            )
        ),
        r"custom-code model TinyDLLMModelLM is causal: its logits at position 0 do not change",
        fix="a causal LM cannot fill masks from both sides: use a masked diffusion model (LLaDA, Dream)",
    ),
    Case(
        "custom-code-mask-ids-disagree",
        "models",
        lambda tmp: text_build(
            HFMaskedLM(
                path=str(write_tiny_dllm(tmp / "two_masks", mask_token_id=11, tokenizer_mask=True)),
                trust_remote_code=True,
            )
        ),
        r"tokenizer of '.*two_masks' has mask_token_id=12 but its config\.json has mask_token_id=11",
        fix="make the tokenizer's mask token and config.json's `mask_token_id` the id the model was trained with",
    ),
    Case(
        "custom-code-without-mask-token",
        "models",
        lambda tmp: text_build(
            HFMaskedLM(path=str(write_tiny_dllm(tmp / "maskless", mask_token_id=None)), trust_remote_code=True)
        ),
        r"'.*maskless' names no mask token: its tokenizer has mask_token_id=None",
        fix="add `mask_token_id` to the folder's config.json (LLaDA: 126336)",
    ),
    Case(
        "hf-task-longer-than-model",
        "models",
        lambda tmp: text_build(
            HFMaskedLM(path=str(write_tiny_dllm(tmp / "short", max_position_embeddings=32)), trust_remote_code=True)
        ),
        r"prompt_len \+ seq_len = 19 \+ 16 = 35 positions, but the model in '.*short' holds max_position_embeddings=32",
        fix="shorten the task's prompt or answer, or use a model with more positions",
    ),
    Case(
        "hf-task-token-missing-from-model-tokenizer",
        "models",
        lambda tmp: text_build(HFMaskedLM(path=str(dllm_without_bar(tmp)), trust_remote_code=True)),
        r"the task's token '\|' \(id 6\) is not one token of the tokenizer of .*no_bar",
        fix="use a model whose tokenizer holds every task token (`tokenizer: task` if it was trained on the task ids)",
    ),
    Case(
        "lora-target-matches-nothing",
        "models",
        lambda tmp: rl_module(lora=LoRAConfig(target_modules=["qkv", "q_proj"])).attach_task(shapes()),
        r"lora.target_modules=\['q_proj'\] match no linear layer of DFlowTransformer.*blocks\.\*\.attn\.qkv",
        fix="name linear layers the message lists (or a suffix of their names), or leave target_modules unset",
    ),
    Case(
        "lora-4bit-without-cuda-or-bitsandbytes",
        "models",
        lambda tmp: rl_module(lora=LoRAConfig(load_in_4bit=True)).attach_task(shapes()),
        r"lora.load_in_4bit=true needs (a CUDA GPU|the bitsandbytes package)",
        fix="`lora.load_in_4bit: false` (plain LoRA) on a CPU; on a GPU `pip install 'dflow[qlora]'`",
    ),
    # ---- tasks
    Case(
        "task-unknown-name",
        "tasks",
        lambda tmp: get_task("mnist"),
        r"unknown task name 'mnist'",
        fix="one of arithmetic, countdown, glyphs, shapes, sudoku, text",
    ),
    Case(
        "task-unknown-argument",
        "tasks",
        lambda tmp: get_task("shapes", heigth=12),
        r"task 'shapes' has no argument\(s\) \{'heigth': 12\}",
        fix="check the spelling against the task's arguments (listed in the message)",
    ),
    Case(
        "task-too-small-image",
        "tasks",
        lambda tmp: ShapesTask(height=4),
        r"height must be an integer >= 8, got 4",
        fix="shapes images are at least 8x8",
    ),
    Case(
        "task-unknown-split",
        "tasks",
        lambda tmp: shapes().prompts("val"),
        r"split must be one of \('pretrain', 'rl', 'test'\), got 'val'",
        fix="splits are pretrain (the base's data), rl (RL training prompts) and test (scored only)",
    ),
    Case(
        "task-split-train",
        "tasks",
        lambda tmp: PromptDataModule(shapes(), split="train"),
        r"split='train' is ambiguous.*split='pretrain'.*split='rl'",
        fix="RL recipes train on `split: rl`; pretraining recipes on `split: pretrain`",
    ),
    Case(
        "data-module-unknown-split",
        "tasks",
        lambda tmp: PromptDataModule(shapes(), split="validation"),
        r"got 'validation'",
        fix="`data.init_args.split` is pretrain, rl or test",
    ),
    Case(
        "task-x1-out-of-range",
        "tasks",
        lambda tmp: shapes().reward(x1_of(9), prompts(1)),
        r"x1 values must lie in \[0, 7\) for task 'shapes', found 9",
        fix="samples hold data values 0..V-1; a mask id left in x1 means the sampler did not finish",
    ),
    Case(
        "task-x1-wrong-length",
        "tasks",
        lambda tmp: shapes().reward(torch.zeros(1, 144, dtype=torch.long), prompts(1)),
        r"x1 must have shape \[B, 64\] for task 'shapes', got \(1, 144\)",
        fix="the task's seq_len is height * width; match the sampler's seq_len to it",
    ),
    Case(
        "task-tokenizer-without-answer-symbols",
        "tasks",
        lambda tmp: CountdownTask(**SMALL_COUNTDOWN, tokenizer=words_tokenizer(tmp), chat_template=False),
        r"no single token for the answer symbol\(s\) '\+' .*'\('",
        fix="use the model's own tokenizer folder; every answer symbol (digits, + - * / ( )) must be one token",
    ),
    Case(
        "task-chat-template-missing",
        "tasks",
        lambda tmp: CountdownTask(**SMALL_COUNTDOWN, tokenizer=words_tokenizer(tmp)),
        r"chat_template=True but the tokenizer in '.*words' has no chat template",
        fix="give a tokenizer folder whose tokenizer_config.json holds a chat template, or set chat_template: false",
    ),
    Case(
        "task-prompt-longer-than-prompt-len",
        "tasks",
        lambda tmp: CountdownTask(**SMALL_COUNTDOWN, prompt_len=10),
        r"prompt_len=10 is shorter than its longest prompt \(33 tokens\)",
        fix="raise prompt_len, or leave it unset (the longest prompt of the splits)",
    ),
    # ---- rewards
    Case(
        "reward-returns-nan",
        "rewards",
        lambda tmp: WeightedRewards([nan_reward])(x1_of(0, 2), prompts(2)),
        r"reward 'nan_reward' returned nan",
        fix="make the reward finite (the RL step is stopped or skipped by `on_bad_reward`)",
    ),
    Case(
        "reward-returns-wrong-shape",
        "rewards",
        lambda tmp: WeightedRewards([scalar_reward])(x1_of(0, 2), prompts(2)),
        r"reward 'scalar_reward' returned shape \(\), expected \(2,\)",
        fix="return one float per sample, shape [B]",
    ),
    Case(
        "reward-raises",
        "rewards",
        lambda tmp: WeightedRewards([failing_reward])(x1_of(0, 2), prompts(2)),
        r"reward 'failing_reward' raised RuntimeError: verifier crashed",
        fix="fix the reward; the original exception is chained as `__cause__`",
    ),
    Case(
        "reward-raises-during-rl",
        "rewards",
        lambda tmp: one_rl_step(rl_module(rewards=[RewardSpec(source=f"{__name__}:failing_reward")]), tmp),
        r"\(bad_reward\): reward 'failing_reward' raised RuntimeError: verifier crashed",
        fix="fix the reward, or set `on_bad_reward: skip` to skip such steps (up to max_consecutive_faults)",
    ),
    Case(
        "reward-path-missing-attribute",
        "rewards",
        lambda tmp: load_reward("dflow.rewards:not_a_reward"),
        r"reward path 'dflow.rewards:not_a_reward'.*has no attribute 'not_a_reward'",
        fix="`source: package.module:callable` must name an importable callable",
    ),
    Case(
        "reward-path-missing-module",
        "rewards",
        lambda tmp: load_reward("my_rewards.nope:score"),
        r"reward path 'my_rewards.nope:score': cannot import 'my_rewards.nope'",
        fix="the module must be importable from the working directory or installed",
    ),
    Case(
        "reward-weights-all-zero",
        "rewards",
        lambda tmp: WeightedRewards([nan_reward, scalar_reward], [0.0, 0.0]),
        r"every reward weight is 0 \(weights=\[0\.0, 0\.0\]\)",
        fix="give at least one reward a non-zero weight (RL would learn nothing)",
    ),
    Case(
        "reward-spec-unknown-task-kind",
        "rewards",
        lambda tmp: RewardSpec(source="task:acc").build(shapes()),
        r"source='task:acc'",
        fix="`source` is task, task:correct or package.module:callable",
    ),
    Case(
        "reward-class-without-its-arguments",
        "rewards",
        lambda tmp: RewardSpec(source=f"{__name__}:TargetReward").build(shapes()),
        r"building '.*TargetReward' with arguments=\{\} failed .*target",
        fix="give the class's constructor arguments as `arguments: {target: 3}`",
    ),
    Case(
        "reward-arguments-for-a-function",
        "rewards",
        lambda tmp: RewardSpec(source=f"{__name__}:scalar_reward", arguments={"target": 3}).build(shapes()),
        r"arguments=\{'target': 3\} given for '.*scalar_reward', which is a function",
        fix="only a class takes arguments; drop them or wrap the function in a class",
    ),
    Case(
        "reward-list-with-a-non-number",
        "rewards",
        lambda tmp: WeightedRewards([list_with_none_reward])(x1_of(0, 2), prompts(2)),
        r"'list_with_none_reward' returned a list whose entry 1 is None",
        fix="a list reward holds one number per sample (a tensor or array also works)",
    ),
    # ---- RL design space
    Case(
        "bf16-true-on-a-gpu-without-bfloat16",
        "rl",
        lambda tmp: bf16_on_an_old_gpu(),
        r"trainer.precision=bf16-true needs bfloat16, which cuda:0 does not have",
        fix="`--trainer.precision=32-true` on GPUs before Ampere; bf16 works on CPUs and Ampere+",
    ),
    Case(
        "fp16-with-a-loss-scaler-for-rl",
        "rl",
        lambda tmp: check_precision("16-mixed", torch.device("cuda", 0)),
        r"trainer.precision=16-mixed \(fp16 with a loss scaler\) is not supported for RL: .*clip the scaled gradient",
        fix="`--trainer.precision=bf16-mixed` (CPUs, Ampere+ GPUs) or 32-true; fp16 pretraining is unaffected",
    ),
    Case(
        "group-advantage-batch-not-multiple-of-group",
        "rl",
        lambda tmp: GroupAdvantage()(AdvantageInput(torch.rand(6), group_size=4)),
        r"B=6 .*group_size G=4",
        fix="B = prompts x group_size; keep each prompt's G rollouts together",
    ),
    Case(
        "group-of-one-with-group-advantage",
        "rl",
        lambda tmp: rl_module(group_size=1),
        r"group_size=1 with GroupAdvantage",
        fix="group-relative advantages need group_size >= 2 (a group of one has no spread)",
    ),
    Case(
        "per-step-advantage-with-final-sample-likelihood",
        "rl",
        lambda tmp: rl_module(advantage=StepwiseGainAdvantage()),
        r"per-step advantage .*ELBOLikelihood",
        fix="StepwiseGainAdvantage needs TrajectoryLikelihood or IntermediateActionLikelihood",
    ),
    Case(
        "kl-negative-beta",
        "rl",
        lambda tmp: KLPenalty(beta=-0.1),
        r"beta .*got -0\.1",
        fix="beta >= 0 (0 turns the penalty and the reference model off)",
    ),
    Case(
        "kl-unknown-estimator",
        "rl",
        lambda tmp: KLPenalty(beta=0.1, estimator="k4"),
        r"estimator .*got 'k4'",
        fix="estimator is k1, k2 or k3",
    ),
    Case(
        "kl-without-reference",
        "rl",
        lambda tmp: rl_module(kl=KLPenalty(0.05), reference_from_initial=False),
        r"kl\.beta=0\.05 > 0 needs a reference model",
        fix="set `reference_from_initial: true`, or `beta: 0`",
    ),
    Case(
        "intermediate-action-without-draws",
        "rl",
        lambda tmp: IntermediateActionLikelihood().validate(Sampler(sample_path(), num_steps=2)),
        r"record_draws=False",
        fix="build the sampler with record_draws=True (RLModule does this itself)",
    ),
    Case(
        "spg-on-a-uniform-source",
        "rl",
        lambda tmp: rl_module(
            likelihood=SandwichedBounds(block_length=8),
            objective=SandwichedObjective(),
            aggregation=SampleSumAggregation(),
        ),
        r"SandwichedBounds \(SPG\).*MaskSource.*source=UniformSource",
        fix="SPG's upper bound is derived for masked diffusion: use a MaskSource path (recipes/shapes/spg_mask.yaml)",
    ),
    Case(
        "testbed-state-space-too-large",
        "sampler",
        lambda tmp: exact_distribution(
            lambda x, t, c: torch.zeros(*x.shape, 4),
            Sampler(MixturePath(MaskSource(4)), num_steps=2),
            torch.ones(2, 8, dtype=torch.long),
            8,
        ),
        r"5\*\*8 = 390,625 states is above the limit max_states=65,536",
        fix="the exact testbed enumerates every state: use a shorter sequence or fewer symbols "
        "(the DP's cost grows with the square of the states)",
    ),
    Case(
        "spg-bounds-with-another-objective",
        "rl",
        lambda tmp: rl_module(likelihood=SandwichedBounds(block_length=8)),
        r"EPG takes units of kind \('log_prob',\), but SandwichedBounds gives 'bounds'",
        fix="SandwichedBounds' [lower, upper] units go with SandwichedObjective (and SampleSumAggregation)",
    ),
    Case(
        "coupled-noise-range-not-symmetric",
        "rl",
        lambda tmp: CoupledELBOLikelihood(noise_min=0.1, noise_max=0.8),
        r"noise_min \+ noise_max = 1.*noise_min=0\.1, noise_max=0\.8",
        fix="the complement of level m has level 1 - m: use a range symmetric about 1/2, or coupled: false",
    ),
    Case(
        "wd1-negative-weight-below-zero",
        "rl",
        lambda tmp: GroupSoftmaxWeights(negative_weight=-1.0),
        r"negative_weight=-1\.0",
        fix="negative_weight (wd1's lambda) >= 0; 0 drops the push away from low-reward samples",
    ),
    Case(
        "forward-reconstruction-window-past-grid",
        "rl",
        lambda tmp: ForwardReconstruction(num_timesteps=8, max_start=4, grid_steps=10),
        r"num_timesteps=8, max_start=4, grid_steps=10",
        fix="num_timesteps + max_start <= grid_steps",
    ),
    Case(
        "step-window-past-rollout-steps",
        "rl",
        lambda tmp: one_rl_step(rl_module(likelihood=TrajectoryLikelihood(StepWindow(size=3))), tmp),
        r"StepWindow: steps 0\.\.2 exceed the sampler's num_steps=2",
        fix="start + size (max_start + size) <= rollout.num_steps; checked at the first step, not at start-up",
    ),
    Case(
        "elbo-unknown-weighting",
        "rl",
        lambda tmp: ELBOLikelihood(weighting="linear"),
        r"weighting must be 'exact' or 'uniform', got 'linear'",
        fix="weighting is exact or uniform",
    ),
    Case(
        "mean-field-negative-prompt-mask-id",
        "rl",
        lambda tmp: MeanFieldLikelihood(prompt_mask_id=-1),
        r"prompt_mask_id=-1",
        fix="prompt_mask_id is a prompt id in [0, prompt_vocab_size); 0 is the pad / null prompt",
    ),
    Case(
        "minibatch-not-multiple-of-group",
        "rl",
        lambda tmp: one_rl_step(rl_module(group_size=2, minibatch_size=3), tmp),
        r"minibatch_size=3 must be a multiple of group_size=2",
        fix="minibatch_size is a multiple of group_size (a group never splits across mini-batches)",
    ),
    Case(
        "rl-zero-group-size",
        "rl",
        lambda tmp: rl_module(group_size=0),
        r"group_size=0",
        fix="group_size >= 1 (>= 2 for group-relative advantages)",
    ),
    Case(
        "rl-task-vocab-differs-from-path",
        "rl",
        lambda tmp: rl_module(path=MixturePath(UniformSource(5))).attach_task(shapes()),
        r"task 'shapes' has vocab_size=7 but the path's source has vocab_size=5",
        fix="set the source's vocab_size to the task's V (shapes 7)",
    ),
    Case(
        "pretrain-task-vocab-differs-from-path",
        "rl",
        lambda tmp: PretrainModule(TransformerDenoiser(**TINY), MixturePath(MaskSource(5))).bind(shapes()),
        r"path vocab_size=5 .*task 'shapes' vocab_size=7",
        fix="set the source's vocab_size to the task's V",
    ),
    # ---- recipes and the command line
    Case(
        "recipe-file-missing",
        "recipes",
        lambda tmp: cli("fit", "--config", "recipes/shapes/no_such_recipe.yaml"),
        r'"config": File does not exist: .*no_such_recipe\.yaml',
        error=SystemExit,
        fix="check the path (relative to the working directory)",
    ),
    Case(
        "recipe-override-unknown-field",
        "recipes",
        lambda tmp: cli("fit", "--config", str(RL_RECIPE), "--model.init_args.not_a_field=1"),
        r"Option 'not_a_field' is not accepted",
        error=SystemExit,
        fix="check the spelling; `dflow fit --config R --print_config` lists every field",
    ),
    Case(
        "recipe-override-unknown-trainer-key",
        "recipes",
        lambda tmp: cli("fit", "--config", str(RL_RECIPE), "--trainer.max_stepz=1"),
        r"unrecognized arguments: --trainer\.max_stepz=1",
        error=SystemExit,
        fix="check the spelling against `dflow fit --help`",
    ),
    Case(
        "recipe-override-wrong-type",
        "recipes",
        lambda tmp: cli("fit", "--config", str(RL_RECIPE), "--model.init_args.rollout.group_size=eight"),
        r'"rollout\.group_size":\s+Expected a <class \'int\'>\. Got value: eight',
        error=SystemExit,
        fix="give a value of the annotated type",
    ),
    Case(
        "recipe-override-rejected-value",
        "recipes",
        lambda tmp: cli("fit", "--config", str(RL_RECIPE), "--model.init_args.kl.init_args.beta=-1"),
        r"beta must be a finite number >= 0, got -1\.0",
        fix="the inner message is the class's check; fix that value",
    ),
    Case(
        "recipe-cli-optimizer",
        "recipes",
        lambda tmp: cli("fit", "--config", str(RL_RECIPE), "--optimizer=torch.optim.SGD"),
        r"--optimizer='torch\.optim\.SGD' is not supported.*model\.init_args\.optim\.lr",
        fix="dflow's modules build AdamW and its schedule: set RLModule's model.init_args.optim.lr / weight_decay / "
        "warmup_steps / min_lr_ratio / decay_steps (PretrainModule: model.init_args.lr, ...)",
    ),
    Case(
        "recipe-flat-rl-setting",
        "recipes",
        lambda tmp: cli("fit", "--config", str(RL_RECIPE), "--model.init_args.group_size=4"),
        r"group_size -> rollout\.group_size \(in the command line\)",
        fix="RLModule's settings are in blocks: --model.init_args.rollout.group_size=4 (optim.lr, evaluation.*, ...)",
    ),
    Case(
        "recipe-file-flat-rl-setting",
        "recipes",
        lambda tmp: cli("fit", "--config", str(_flat_recipe(tmp))),
        r"eval_every_n_steps -> evaluation\.every_n_steps \(in .*flat\.yaml\)",
        fix="move the key into its block: evaluation: {every_n_steps: 10}",
    ),
    Case(
        "recipe-cli-lr-scheduler",
        "recipes",
        lambda tmp: cli(
            "fit",
            "--config",
            str(RL_RECIPE),
            "--lr_scheduler=torch.optim.lr_scheduler.ExponentialLR",
            "--lr_scheduler.gamma=0.9",
        ),
        r"--lr_scheduler='torch\.optim\.lr_scheduler\.ExponentialLR' is not supported",
        fix="the schedule is the module's: model.init_args.optim.warmup_steps / min_lr_ratio / decay_steps",
    ),
    Case(
        "recipe-source-vocab-differs-from-task",
        "recipes",
        lambda tmp: cli(
            "fit",
            "--config",
            str(PRETRAIN_RECIPE),
            *TINY_CLI,
            "--trainer.max_steps=1",
            "--model.init_args.path.init_args.source.init_args.vocab_size=5",
        ),
        r"path vocab_size=5 .*task 'shapes' vocab_size=7",
        fix="set the source's vocab_size to the task's V",
    ),
    Case(
        "sample-task-args-not-json",
        "recipes",
        lambda tmp: dflow_main(["sample", "--checkpoint", save_base(tmp / "base"), "--task-args", "{height: 8}"]),
        r"--task-args '\{height: 8\}' is not valid JSON",
        fix='--task-args is JSON: \'{"height": 8, "width": 8}\'',
    ),
    Case(
        "sample-checkpoint-missing",
        "recipes",
        lambda tmp: dflow_main(["sample", "--checkpoint", "runs/no_such_export"]),
        r"path='runs/no_such_export' is not a directory",
        fix="pass an exported base directory (PretrainModule.export_pretrained / ExportPretrained)",
    ),
    # ---- checkpoints
    Case(
        "checkpoint-missing",
        "checkpoints",
        lambda tmp: load_checkpoint_file(tmp / "nope.ckpt"),
        r"checkpoint '.*nope\.ckpt' does not exist",
        fix="check --ckpt_path; `--ckpt_path last` resumes from CHECKPOINT_DIR/last.ckpt",
    ),
    Case(
        "checkpoint-truncated",
        "checkpoints",
        lambda tmp: load_checkpoint_file(truncated_checkpoint(tmp)),
        r"checkpoint '.*truncated\.ckpt' is unreadable: truncated or not a torch checkpoint",
        fix="resume from the previous checkpoint (saves are atomic: last.ckpt is never half-written by dflow)",
    ),
    Case(
        "checkpoint-not-lightning",
        "checkpoints",
        lambda tmp: load_checkpoint_file(plain_torch_file(tmp)),
        r"checkpoint '.*weights\.pt' is not a Lightning checkpoint \(no 'state_dict'; found \['w'\]\)",
        fix="--ckpt_path takes a Lightning .ckpt; load bare weights with PretrainedDenoiser instead",
    ),
    Case(
        "checkpoint-incompatible-shapes",
        "checkpoints",
        lambda tmp: check_state_dict(
            torch.nn.Linear(2, 2),
            {"state_dict": {"weight": torch.zeros(3, 2), "bias": torch.zeros(2)}, CHECKPOINT_PATH_KEY: "run.ckpt"},
        ),
        r"checkpoint 'run\.ckpt' is incompatible .*weight: checkpoint \(3, 2\) vs model \(2, 2\)",
        fix="resume with the configuration the checkpoint was trained with",
    ),
    Case(
        "recipe-resume-from-missing-checkpoint",
        "checkpoints",
        lambda tmp: resume_from("runs/old/checkpoints/step=100.ckpt"),
        r"checkpoint 'runs/old/checkpoints/step=100\.ckpt' does not exist",
        fix="check --ckpt_path (`last` resumes from CHECKPOINT_DIR/last.ckpt, and starts afresh if there is none)",
    ),
    Case(
        "recipe-resume-from-truncated-checkpoint",
        "checkpoints",
        lambda tmp: resume_from(truncated_checkpoint(tmp)),
        r"checkpoint '.*truncated\.ckpt' is unreadable: truncated or not a torch checkpoint",
        fix="resume from an earlier checkpoint",
    ),
    Case(
        "recipe-resume-from-weights-file",
        "checkpoints",
        lambda tmp: resume_from(plain_torch_file(tmp)),
        r"checkpoint '.*weights\.pt' is not a Lightning checkpoint",
        fix="--ckpt_path takes a Lightning .ckpt; start from bare weights with PretrainedDenoiser",
    ),
    # ---- block decoding (rollout.block / evaluation.block, DiffusionGemma)
    Case(
        "block-len-below-one",
        "sampler",
        lambda tmp: BlockConfig(block_len=0),
        r"block\.block_len must be an int >= 1, got block_len=0",
        fix="`block: {block_len: C, kernel: ...}` with C >= 1 dividing the task's seq_len",
    ),
    Case(
        "block-len-does-not-divide-seq-len",
        "sampler",
        lambda tmp: block_module(BlockConfig(3, ConfidenceUnmaskKernel())),
        r"rollout\.block\.block_len=3 does not divide the task's seq_len=16; use one of \[1, 2, 4, 8, 16\]",
        fix="choose a block_len that divides the task's seq_len (the message lists them)",
    ),
    Case(
        "block-unmask-kernel-on-a-uniform-source",
        "sampler",
        lambda tmp: block_module(BlockConfig(4, ConfidenceUnmaskKernel()), path=MixturePath(UniformSource(4))),
        r"rollout\.block\.kernel=ConfidenceUnmaskKernel\(.*source=UniformSource.*MaskSource",
        fix="ConfidenceUnmaskKernel reveals masked tokens: use a MaskSource path, or EntropyBoundKernel / PathKernel",
    ),
    Case(
        "block-entropy-kernel-on-a-mask-source",
        "sampler",
        lambda tmp: block_module(None, evaluation_block=BlockConfig(4, EntropyBoundKernel())),
        r"evaluation\.block\.kernel=EntropyBoundKernel\(.*source=MaskSource.*UniformSource",
        fix="EntropyBoundKernel re-noises uniformly: use a UniformSource path, or ConfidenceUnmaskKernel / PathKernel",
    ),
    Case(
        "diffusion-gemma-on-a-mask-source",
        "models",
        lambda tmp: gemma().build(TextTask(), MixturePath(MaskSource(4))),
        r"UniformSource\(vocab_size=4\), got source=MaskSource",
        fix="DiffusionGemma is uniform-source block diffusion: `source: {class_path: dflow.paths.UniformSource}`",
    ),
    Case(
        "diffusion-gemma-without-block",
        "models",
        lambda tmp: block_module(None, path=MixturePath(UniformSource(4)), denoiser=gemma()),
        r"set rollout\.block with block_len=4 \(the model's canvas_length\)",
        fix="add `rollout.block` and `evaluation.block` with block_len = the model's canvas_length and a kernel",
    ),
    Case(
        "diffusion-gemma-block-len-not-canvas",
        "models",
        lambda tmp: block_module(
            BlockConfig(8, EntropyBoundKernel()),
            path=MixturePath(UniformSource(4)),
            evaluation_block=BlockConfig(4, EntropyBoundKernel()),
            denoiser=gemma(),
        ),
        r"rollout\.block\.block_len=8 must equal the model's canvas_length=4",
        fix="set block_len to the model's canvas_length (or change config.canvas_length)",
    ),
    Case(
        "final-sample-estimator-on-diffusion-gemma-blocks",
        "rl",
        lambda tmp: block_module(
            BlockConfig(4, EntropyBoundKernel()),
            path=MixturePath(UniformSource(4)),
            evaluation_block=BlockConfig(4, EntropyBoundKernel()),
            denoiser=gemma(),
            likelihood=ELBOLikelihood(num_timesteps=2, grid_steps=4),
        ),
        r"ELBOLikelihood scores the final sample.*DiffusionGemmaDenoiser with BlockSampler\(",
        fix="use TrajectoryLikelihood or SpanLikelihood, or a one-block answer (canvas_length = seq_len)",
    ),
    Case(
        "intermediate-action-on-block-rollouts",
        "rl",
        lambda tmp: block_module(BlockConfig(4, ConfidenceUnmaskKernel()), likelihood=IntermediateActionLikelihood()),
        r"IntermediateActionLikelihood scores whole-sequence posterior draws.*block rollouts \(BlockSampler",
        fix="use TrajectoryLikelihood or SpanLikelihood on block rollouts, or drop rollout.block",
    ),
    Case(
        "span-crosses-a-block",
        "rl",
        lambda tmp: block_module(BlockConfig(4, ConfidenceUnmaskKernel()), likelihood=SpanLikelihood(span=3)),
        r"SpanLikelihood\(span=3\).*must divide the steps per block \(rollout\.num_steps=4\)",
        fix="choose a span that divides rollout.num_steps (the steps per block)",
    ),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_bad_input_names_the_field_and_the_value(case: Case, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # runs and exports write under the working directory
    with pytest.raises(BaseException) as info:
        case.make_error(tmp_path)
    err = info.value
    assert type(err) is case.error, f"{case.id}: expected {case.error.__name__}, got {type(err).__name__}: {err}"
    if isinstance(err, SystemExit):
        assert err.code == 2, f"{case.id}: exit code {err.code!r}"
    assert re.search(case.field_and_value, message(err)), f"{case.id}: message does not match: {message(err)}"


def test_catalogue_is_large_and_covers_every_area():
    assert len(CASES) >= 25
    assert len({c.id for c in CASES}) == len(CASES)
    assert {c.area for c in CASES} == set(AREAS)


def test_troubleshooting_doc_lists_every_case():
    doc = (ROOT / "docs" / "troubleshooting.md").read_text()
    missing = [c.id for c in CASES if f"`{c.id}`" not in doc]
    assert not missing, f"docs/troubleshooting.md lacks {missing}; regenerate: python {Path(__file__).name}"


# ---------------------------------------------------------------------------- docs table
def observed(case: Case, tmp: Path) -> str:
    """The message a researcher sees for ``case``: the exception text, or the error lines jsonargparse
    prints; the scratch directory is shown as ``<tmp>``."""
    try:
        case.make_error(tmp)
    except BaseException as err:  # noqa: BLE001 - the catalogue is about every kind of failure
        text = message(err)
        if isinstance(err, SystemExit):
            text = text[text.index("error:") :]
        text = text.replace(str(tmp), "<tmp>").replace(str(ROOT) + "/", "")
        return f"{type(err).__name__}: {text.strip()}"
    return "(no error)"


MAX_SHOWN = 700  # characters of a message shown in the docs; jsonargparse appends the whole config


def markdown_tables(tmp: Path) -> str:
    """One table per area: id, the observed message (cut at MAX_SHOWN characters), the fix."""
    seen = {}
    for i, case in enumerate(CASES):
        scratch = tmp / f"case{i}"
        scratch.mkdir()
        with contextlib.chdir(scratch):
            seen[case.id] = observed(case, scratch)
    out = []
    for area in AREAS:
        out += [f"### {area}", "", "| id | what the researcher sees | fix |", "|---|---|---|"]
        for case in (c for c in CASES if c.area == area):
            text = seen[case.id]
            if len(text) > MAX_SHOWN:
                text = text[:MAX_SHOWN] + f" … [{len(text) - MAX_SHOWN} more characters]"
            text = html.escape(text, quote=False).replace("|", "&#124;").replace("\n", "<br>")
            out.append(f"| `{case.id}` | <code>{text}</code> | {case.fix.replace('|', '&#124;')} |")
        out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        print(markdown_tables(Path(tmp)))
