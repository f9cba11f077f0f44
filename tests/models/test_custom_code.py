"""Custom-code masked dLLMs (LLaDA / Dream style) through HFMaskedLMDenoiser and the HFMaskedLM builder.

Every model is the tiny folder that ``tests/models/tiny_dllm.py`` writes: its own modelling code,
``auto_map`` and ``mask_token_id`` in ``config.json``, random weights; nothing comes from the hub.
"""

from __future__ import annotations

import json
from pathlib import Path

import lightning
import pytest
import torch
import transformers

from dflow.lightning import HFMaskedLM, PretrainedDenoiser, RLModule
from dflow.lightning.export import model_meta, write_model_folder
from dflow.models import HFMaskedLMDenoiser
from dflow.paths import MaskSource, MixturePath
from dflow.rl import AllSteps, ClippedSurrogate, GroupAdvantage, KLPenalty, TrajectoryLikelihood
from dflow.sampling import BlockSampler, ConfidenceUnmaskKernel, SamplerConfig
from dflow.tasks import TextTask
from tests.conftest import rl_settings
from tests.models.tiny_dllm import MASK_ID, TOKENS, write_tiny_dllm, write_tokenizer

pytestmark = pytest.mark.usefixtures("single_thread")

# the model's ids of data values 0..3, deliberately not sorted: a wrong column order shows
DATA_IDS = [8, 5, 7, 6]
V, LC, B, L = len(DATA_IDS), 3, 4, 6
OPT_IN = r"model\.init_args\.denoiser\.init_args\.trust_remote_code: true"


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return write_tiny_dllm(tmp_path_factory.mktemp("tiny_dllm") / "tiny")


@pytest.fixture(scope="module")
def raw(folder):
    """The same folder loaded by ``transformers`` directly: the reference for hand computations."""
    return transformers.AutoModel.from_pretrained(folder, trust_remote_code=True, local_files_only=True).eval()


def denoiser(folder, **kwargs) -> HFMaskedLMDenoiser:
    return HFMaskedLMDenoiser(folder, DATA_IDS, prompt_len=LC, trust_remote_code=True, **kwargs).eval()


def inputs(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    x_t = torch.randint(0, V + 1, (B, L), generator=gen)  # states 0..V, V = mask
    x_t[:, 0] = V
    cond = torch.randint(0, 16, (B, LC), generator=gen)  # the model's own ids
    return x_t, torch.rand(B, generator=gen), cond


def by_hand(raw, x_t, cond):
    """Full-vocabulary logits of the raw model on ``[cond | ids of x_t]``, the mask state as id 12."""
    table = torch.tensor(DATA_IDS + [MASK_ID])
    return raw(input_ids=torch.cat([cond, table[x_t]], dim=1)).logits  # [B, LC + L, 16]


# ---------------------------------------------------------------------------- loading and logits
def test_logits_are_the_models_own_restricted_to_the_data_columns_in_order(folder, raw):
    model = denoiser(folder)  # no mask_token_id given: config.json's 12
    assert model.custom_code and int(model.state_to_token[-1]) == MASK_ID
    x_t, t, cond = inputs()
    with torch.no_grad():
        logits = model(x_t, t, cond)
        full = by_hand(raw, x_t, cond)
    assert logits.shape == (B, L, V)
    assert torch.equal(logits, full[:, LC:, DATA_IDS])
    assert not torch.equal(logits, full[:, LC:, sorted(DATA_IDS)])  # the order matters


def test_the_mask_state_is_fed_as_the_config_mask_id(folder, raw):
    model = denoiser(folder)
    x_t = torch.full((1, L), V)  # all masked
    cond = torch.tensor([[1, 2, 3]])
    with torch.no_grad():
        direct = raw(input_ids=torch.cat([cond, torch.full((1, L), MASK_ID)], 1)).logits[:, LC:, DATA_IDS]
        other = raw(input_ids=torch.cat([cond, torch.full((1, L), MASK_ID - 1)], 1)).logits[:, LC:, DATA_IDS]
        assert torch.equal(model(x_t, torch.zeros(1), cond), direct)
    assert not torch.equal(direct, other)  # the mask id is not a no-op input


def test_time_agnostic_and_cond_none_is_the_all_zero_prompt(folder):
    model = denoiser(folder)
    x_t, t, cond = inputs()
    with torch.no_grad():
        assert torch.equal(model(x_t, t, cond), model(x_t, 1.0 - t, cond))
        assert torch.equal(model(x_t, t, None), model(x_t, t, torch.zeros(B, LC, dtype=torch.long)))


def test_shift_logits_reads_each_position_from_the_one_before(folder, raw):
    x_t, t, cond = inputs()
    with torch.no_grad():
        full = by_hand(raw, x_t, cond)[..., DATA_IDS]  # [B, LC + L, V]
        shifted = denoiser(folder, shift_logits=True)(x_t, t, cond)
        # Dream's generate: logits = cat(logits[:, :1], logits[:, :-1]); answer position i <- i - 1
        assert torch.equal(shifted, torch.cat([full[:, :1], full[:, :-1]], 1)[:, LC:])
        assert torch.equal(shifted[:, 0], full[:, LC - 1])  # the first answer cell from the last prompt token
        unprompted = HFMaskedLMDenoiser(folder, DATA_IDS, trust_remote_code=True, shift_logits=True).eval()
        alone = by_hand(raw, x_t, cond[:, :0])[..., DATA_IDS]  # [B, L, V]
        expected = torch.cat([alone[:, :1], alone[:, :-1]], 1)  # position 0 keeps its own
        assert torch.equal(unprompted(x_t, t), expected)


def test_mask_id_given_must_agree_with_the_config(folder, tmp_path):
    assert int(denoiser(folder, mask_token_id=MASK_ID).state_to_token[-1]) == MASK_ID
    with pytest.raises(ValueError, match=r"mask_token_id=11 \(given.*disagrees.*mask_token_id=12"):
        denoiser(folder, mask_token_id=11)
    bare = write_tiny_dllm(tmp_path / "no_mask", mask_token_id=None, tokenizer=False)
    with pytest.raises(ValueError, match="mask_token_id: none given, and no custom-code model config with a mask"):
        denoiser(bare)
    assert int(denoiser(bare, mask_token_id=11).state_to_token[-1]) == 11


def test_a_transformers_config_mask_default_is_not_taken_for_the_mask_id():
    """XLM's config carries an unused mask_token_id=0 (its mask is mask_index, 5 by default): only
    custom code's config is trusted for the mask id, so a given id other than 0 stands, and none is
    taken from XLM's config."""
    xlm = {"model_type": "xlm", "vocab_size": 16, "emb_dim": 8, "n_layers": 1, "n_heads": 2}
    assert transformers.AutoConfig.for_model(**xlm).mask_token_id == 0
    assert int(HFMaskedLMDenoiser(xlm, DATA_IDS, mask_token_id=4).state_to_token[-1]) == 4
    with pytest.raises(ValueError, match="mask_token_id: none given"):
        HFMaskedLMDenoiser(xlm, DATA_IDS)


def test_dtype_loads_the_weights_in_it(folder):
    assert {p.dtype for p in denoiser(folder, dtype="bfloat16").parameters()} == {torch.bfloat16}
    with pytest.raises(ValueError, match="dtype=.*'int8'"):
        denoiser(folder, dtype="int8")


# ---------------------------------------------------------------------------- safety and refusals
def write_booby_trapped(folder: Path) -> Path:
    """A folder whose modelling code raises as soon as it is imported: loading it must not get there."""
    folder.mkdir()
    (folder / "modeling_trap.py").write_text("raise RuntimeError('the folder code ran')\n")
    auto_map = {"AutoConfig": "modeling_trap.TrapConfig", "AutoModel": "modeling_trap.TrapModel"}
    config = {"model_type": "trap", "auto_map": auto_map, "mask_token_id": 3}
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_custom_code_without_the_opt_in_is_refused_before_it_runs(tmp_path):
    trap = write_booby_trapped(tmp_path / "trap")
    with pytest.raises(ValueError, match=rf"'.*trap' ships its own modelling code .*modeling_trap.TrapModel.*{OPT_IN}"):
        HFMaskedLMDenoiser(trap, DATA_IDS)
    task = TextTask()
    with pytest.raises(ValueError, match=OPT_IN):  # the builder refuses before loading the tokenizer too
        HFMaskedLM(path=str(trap)).build(task, MixturePath(MaskSource(task.vocab_size)))
    with pytest.raises(RuntimeError, match="the folder code ran"):  # with the opt-in, it does run
        HFMaskedLMDenoiser(trap, DATA_IDS, trust_remote_code=True)


def save_causal(folder: Path, kind: str) -> Path:
    if kind == "gpt2":
        config = transformers.GPT2Config(vocab_size=16, n_embd=8, n_layer=1, n_head=2, n_positions=64)
        transformers.GPT2LMHeadModel(config).save_pretrained(folder)
    else:
        config = transformers.LlamaConfig(
            vocab_size=16, hidden_size=8, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2
        )
        transformers.LlamaForCausalLM(config).save_pretrained(folder)
    return folder


@pytest.mark.parametrize(("kind", "found"), [("gpt2", "GPT2LMHeadModel"), ("llama", "LlamaForCausalLM")])
def test_a_causal_lm_folder_is_refused_naming_the_class_found_and_the_supported_ones(tmp_path, kind, found):
    folder = save_causal(tmp_path / kind, kind)
    with pytest.raises(ValueError, match=rf"holds {found} .*not a masked LM.*supported: masked LMs .*custom-code"):
        HFMaskedLMDenoiser(folder, DATA_IDS, mask_token_id=4, trust_remote_code=True)


def test_a_custom_code_causal_lm_is_refused_by_what_it_computes(tmp_path):
    folder = write_tiny_dllm(tmp_path / "causal", auto_class="AutoModelForCausalLM", causal=True, tokenizer=False)
    with pytest.raises(ValueError, match=r"TinyDLLMModelLM is causal: its logits at position 0 .*supported"):
        HFMaskedLMDenoiser(folder, DATA_IDS, trust_remote_code=True)
    # the same code with bidirectional attention, mapped the way LLaDA maps AutoModelForCausalLM, loads
    both_ways = write_tiny_dllm(tmp_path / "bidirectional", auto_class="AutoModelForCausalLM", tokenizer=False)
    assert HFMaskedLMDenoiser(both_ways, DATA_IDS, trust_remote_code=True).custom_code


def test_custom_code_without_logits_or_a_usable_auto_map_is_refused(tmp_path):
    backbone = write_tiny_dllm(tmp_path / "backbone", class_name="TinyDLLMBackbone", tokenizer=False)
    with pytest.raises(ValueError, match=r"TinyDLLMBackbone returns no token logits .*BaseModelOutput"):
        HFMaskedLMDenoiser(backbone, DATA_IDS, trust_remote_code=True)
    classifier = write_booby_trapped(tmp_path / "classifier")
    config = json.loads((classifier / "config.json").read_text())
    config["auto_map"] = {"AutoModelForSequenceClassification": "modeling_trap.TrapModel"}
    (classifier / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"maps \['AutoModelForSequenceClassification'\], none of which .*AutoModel"):
        HFMaskedLMDenoiser(classifier, DATA_IDS, trust_remote_code=True)
    config["auto_map"] = {"AutoModel": "someone/llada--modeling_llada.LLaDAModelLM"}
    (classifier / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"auto_map.AutoModel='someone/llada--.*another repository"):
        HFMaskedLMDenoiser(classifier, DATA_IDS, trust_remote_code=True)


def test_code_for_other_parts_also_needs_the_opt_in_and_a_builtin_model_class_then_loads(tmp_path):
    """An auto_map without a model class (here a tokenizer's) still ships code: the opt-in is asked
    for; with it the model loads through transformers' own masked-LM class, called with a mask."""
    bert = tmp_path / "bert"
    config = transformers.BertConfig(
        vocab_size=16, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16
    )
    transformers.BertForMaskedLM(config).save_pretrained(bert)
    saved = json.loads((bert / "config.json").read_text())
    saved["auto_map"] = {"AutoTokenizer": ["tokenization_mine.MyTokenizer", None]}
    (bert / "config.json").write_text(json.dumps(saved))
    with pytest.raises(ValueError, match=rf"AutoTokenizer -> tokenization_mine.MyTokenizer.*{OPT_IN}"):
        HFMaskedLMDenoiser(bert, DATA_IDS, mask_token_id=4)
    loaded = HFMaskedLMDenoiser(bert, DATA_IDS, mask_token_id=4, trust_remote_code=True)
    assert type(loaded.mlm).__name__ == "BertForMaskedLM" and not loaded.custom_code


def test_a_sequence_longer_than_the_model_holds_is_named(folder, tmp_path):
    task = TextTask()  # prompt_len 19 + seq_len 16 = 35 positions
    short = write_tiny_dllm(tmp_path / "short", max_position_embeddings=32)
    with pytest.raises(ValueError, match=r"19 \+ 16 = 35 positions.*holds max_position_embeddings=32"):
        HFMaskedLM(path=str(short), trust_remote_code=True).build(task, MixturePath(MaskSource(task.vocab_size)))
    x_t = torch.zeros(1, 62, dtype=torch.long)
    with pytest.raises(ValueError, match=r"length 62 plus prompt_len 3 exceeds the MLM's max_position_embeddings \(64"):
        denoiser(folder)(x_t, torch.zeros(1))


# ---------------------------------------------------------------------------- the recipe builder
def text_and_path():
    task = TextTask()
    return task, MixturePath(MaskSource(task.vocab_size))


def test_builder_translates_the_text_task_to_the_folders_tokenizer(folder, raw):
    task, path = text_and_path()
    model = HFMaskedLM(path=str(folder), trust_remote_code=True).build(task, path).eval()
    words = task.tokenizer.convert_ids_to_tokens(task.data_token_ids)
    assert words == ["1", "2", "3", "4"] and model.data_token_ids.tolist() == [TOKENS.index(w) for w in words]
    assert int(model.state_to_token[-1]) == MASK_ID  # from config.json: the tokenizer declares no mask token
    table = model.prompt_token_ids.tolist()
    assert table[task.tokenizer.pad_token_id] == TOKENS.index("<pad>")
    assert table[task.tokenizer.convert_tokens_to_ids("|")] == TOKENS.index("|")
    batch = task.sample_data(2, torch.Generator().manual_seed(0), split="test")
    x_t = path.sample_xt(batch.x1, torch.full((2,), 0.5), torch.Generator().manual_seed(1))
    assert (x_t == task.vocab_size).any()
    prompt = torch.tensor(table)[batch.cond]
    cells = torch.tensor([TOKENS.index(w) for w in words] + [MASK_ID])[x_t]
    with torch.no_grad():
        expected = raw(input_ids=torch.cat([prompt, cells], 1)).logits[:, task.prompt_len :, model.data_token_ids]
        assert torch.equal(model(x_t, torch.full((2,), 0.5), batch.cond), expected)


def test_builder_takes_the_tokenizers_mask_and_refuses_a_disagreeing_config(tmp_path):
    task, path = text_and_path()
    only_tokenizer = write_tiny_dllm(tmp_path / "tok_mask", mask_token_id=None, tokenizer_mask=True)
    assert int(HFMaskedLM(path=str(only_tokenizer), trust_remote_code=True).build(task, path).state_to_token[-1]) == 12
    disagree = write_tiny_dllm(tmp_path / "disagree", mask_token_id=11, tokenizer_mask=True)
    with pytest.raises(ValueError, match=r"tokenizer of .*disagree' has mask_token_id=12 but its config.json .*=11"):
        HFMaskedLM(path=str(disagree), trust_remote_code=True).build(task, path)
    neither = write_tiny_dllm(tmp_path / "neither", mask_token_id=None)
    with pytest.raises(ValueError, match=r"names no mask token: its tokenizer has mask_token_id=None"):
        HFMaskedLM(path=str(neither), trust_remote_code=True).build(task, path)
    with pytest.raises(ValueError, match=r"trust_remote_code apply to a model folder \(path\)"):
        HFMaskedLM(config={"model_type": "bert"}, trust_remote_code=True)


def test_builder_names_a_task_token_the_folders_tokenizer_lacks(folder, tmp_path):
    task, path = text_and_path()
    lacking = write_tiny_dllm(tmp_path / "no_bar", tokenizer=False)
    write_tokenizer(lacking)
    vocab_file = lacking / "tokenizer.json"
    vocab_file.write_text(vocab_file.read_text().replace('"|"', '"bar"'))
    with pytest.raises(ValueError, match=r"token '\|' \(id 6\) is not one token of the tokenizer of .*no_bar"):
        HFMaskedLM(path=str(lacking), trust_remote_code=True).build(task, path)


def test_an_exported_custom_code_model_reloads_with_the_opt_in(folder, tmp_path):
    task, path = text_and_path()
    model = HFMaskedLM(path=str(folder), trust_remote_code=True, shift_logits=True).build(task, path).eval()
    meta = model_meta(model, {}, task, path, SamplerConfig(), {"rl": False})
    export = write_model_folder(model, meta, tmp_path / "export")
    assert (export / "modeling_tinydllm.py").is_file()  # the code travels with the weights
    with pytest.raises(ValueError, match=OPT_IN):
        PretrainedDenoiser(str(export)).build(task, path)
    again = PretrainedDenoiser(str(export), trust_remote_code=True).build(task, path).eval()
    assert again.shift_logits
    batch = task.sample_data(2, torch.Generator().manual_seed(0), split="test")
    x_t = path.sample_xt(batch.x1, torch.full((2,), 0.5), torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(again(x_t, torch.zeros(2), batch.cond), model(x_t, torch.zeros(2), batch.cond))


# ---------------------------------------------------------------------------- sampling and RL
@pytest.mark.parametrize("confidence", ["max_prob", "sampled"])
def test_block_sampler_rescoring_is_exactly_on_policy(folder, confidence):
    policy = denoiser(folder)
    sampler = BlockSampler(
        MixturePath(MaskSource(V)), ConfidenceUnmaskKernel(confidence=confidence), block_len=3, steps_per_block=2
    )
    cond = inputs()[2]
    traj = sampler.rollout(policy, cond, batch_size=B, seq_len=L, generator=torch.Generator().manual_seed(0))
    assert traj.x1.shape == (B, L) and int(traj.x1.max()) < V  # every block ends unmasked
    assert torch.isfinite(traj.log_probs).all() and (traj.log_probs < 0).any()
    assert torch.equal(sampler.log_probs(policy, traj), traj.log_probs)  # on-policy ratio exactly 1


def test_gradient_checkpointing_recomputes_the_blocks_with_equal_gradients(folder):
    x_t, t, cond = inputs()

    def grads_and_saved(model):
        saved = []
        with torch.autograd.graph.saved_tensors_hooks(lambda x: saved.append(x.numel()) or x, lambda x: x):
            loss = model(x_t, t, cond).logsumexp(-1).sum()
        loss.backward()
        return {n: p.grad for n, p in model.named_parameters()}, sum(saved)

    plain_grads, plain_saved = grads_and_saved(denoiser(folder))
    checkpointed = denoiser(folder, gradient_checkpointing=True)  # .eval(): the RL losses' mode
    assert checkpointed.is_gradient_checkpointing and not checkpointed.training
    grads, saved = grads_and_saved(checkpointed)
    assert saved < plain_saved  # the blocks' activations were not kept
    for name, grad in plain_grads.items():
        torch.testing.assert_close(grads[name], grad, rtol=1e-5, atol=1e-6)


def test_one_rl_step_from_the_recipe_builder_moves_every_parameter(folder, tmp_path, prompt_batches):
    task, path = text_and_path()
    module = RLModule(
        HFMaskedLM(path=str(folder), trust_remote_code=True),
        path,
        TrajectoryLikelihood(AllSteps()),
        ClippedSurrogate(0.2),
        GroupAdvantage(),
        KLPenalty(0.0),
        **rl_settings(
            rollout=SamplerConfig(num_steps=4),
            evaluation=SamplerConfig(num_steps=4),
            group_size=4,
            lr=1e-2,
            eval_every_n_steps=0,
        ),
    )
    module.attach_task(task)
    before = {n: p.detach().clone() for n, p in module.denoiser.named_parameters()}
    trainer = lightning.Trainer(
        max_steps=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        accelerator="cpu",
        devices=1,
    )
    trainer.fit(module, datamodule=prompt_batches(task, num_batches=1, prompts_per_step=2))
    assert trainer.global_step == 1
    unchanged = [n for n, p in module.denoiser.named_parameters() if torch.equal(p.detach(), before[n])]
    assert unchanged == []


# ---------------------------------------------------------------------------- from a recipe
RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "text" / "elbo_epg.yaml"


def run_text_recipe(folder: Path, *flags: str):
    """``dflow fit`` of the text ELBO-EPG recipe for one small RL step, its denoiser pointed at ``folder``."""
    from dflow.cli import run_lightning_cli

    return run_lightning_cli(
        [
            "fit",
            "--config",
            str(RECIPE),
            "--model.init_args.denoiser=dflow.lightning.HFMaskedLM",
            f"--model.init_args.denoiser.init_args.path={folder}",
            *flags,
            "--trainer.max_steps=1",
            "--trainer.enable_progress_bar=false",
            "--trainer.enable_model_summary=false",
            "--trainer.logger=false",
            "--trainer.callbacks=[]",
            "--model.init_args.evaluation.every_n_steps=0",
            "--model.init_args.rollout.num_steps=2",
            "--model.init_args.rollout.group_size=2",
            "--data.init_args.prompts_per_step=1",
        ]
    )


def test_a_text_recipe_points_at_the_folder_with_the_opt_in(folder, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=OPT_IN):
        run_text_recipe(folder)
    cli = run_text_recipe(folder, "--model.init_args.denoiser.init_args.trust_remote_code=true")
    assert cli.trainer.global_step == 1
    assert type(cli.model.denoiser) is HFMaskedLMDenoiser and cli.model.denoiser.custom_code
    assert int(cli.model.denoiser.state_to_token[-1]) == MASK_ID
