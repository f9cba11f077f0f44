"""Text machinery of the reasoning tasks: the in-code character and word tokenizers, answer alphabets, prompts
through a real tokenizer's chat template (a BPE tokenizer trained in code with the ``tokenizers``
library and saved to a temp dir, never a download), the bad-input errors, sample dumps, and the
tasks plugged into a tiny masked LM."""

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from dflow.tasks import ArithmeticTask, CountdownTask, SudokuTask
from dflow.tasks.base import Prompt
from dflow.tasks.countdown import CountdownProblem
from dflow.tasks.reasoning import AnswerAlphabet, build_char_tokenizer
from dflow.tasks.reasoning.prompting import PromptEncoder
from dflow.tasks.reasoning.tokenizer import CHAR_VOCAB, CHARACTERS, build_word_tokenizer

SMALL = {"test_size": 20, "pretrain_size": 300, "rl_size": 300}
SPECIALS = ["<pad>", "<mask>", "<eos>", "<unk>", "<|user|>", "<|assistant|>", "<|end|>"]
TEMPLATE = (
    "{% for m in messages %}<|{{ m.role }}|>\n{{ m.content }}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
CORPUS = [
    "Using only the numbers in the list, write an arithmetic expression that equals the target.",
    "Numbers: [12, 45, 7]\nTarget: 64 (12+45)*7-3 = 396",
    "Mia has 12 stickers. She buys 5 more. How many stickers does Mia have now? 12+5=17",
] * 20


def bpe_tokenizer(specials=SPECIALS, template: str | None = TEMPLATE) -> PreTrainedTokenizerFast:
    """A byte-level BPE trained in code: digit pairs and words merge, single characters stay tokens."""
    core = Tokenizer(models.BPE(unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=list(specials), initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    core.train_from_iterator(CORPUS, trainer)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token="<pad>", mask_token="<mask>", eos_token="<eos>", unk_token="<unk>"
    )
    if template is not None:
        tok.chat_template = template
    return tok


@pytest.fixture(scope="module")
def chat_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("chat_tokenizer")
    bpe_tokenizer().save_pretrained(path)
    return str(path)


def test_char_tokenizer_layout_and_round_trip():
    tok = build_char_tokenizer()
    assert (tok.pad_token_id, tok.mask_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2, 3)
    assert len(tok) == 100 and tok.convert_tokens_to_ids(["\n", " ", "~"]) == [4, 5, 99]
    text = "".join(CHARACTERS) + "Numbers: [3, 7, 25]\nTarget: 46"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert len(ids) == len(text) and tok.decode(ids) == text  # one token per character, joined with nothing
    assert tok("é", add_special_tokens=False)["input_ids"] == [3]


def test_word_tokenizer_layout_and_round_trip():
    tok = build_word_tokenizer(["Mia", "has", "stickers", "How", "many", "a"])
    assert tok.get_vocab() | CHAR_VOCAB == tok.get_vocab()  # the 100 character ids are kept as they are
    # each word and its spaced form, but "a" is a character already: 11 new pieces, then " 0" ... " 9"
    assert (tok.pad_token_id, tok.unk_token_id) == (0, 3) and len(tok) == 100 + 11 + 10
    text = "Mia has 12 stickers.\nHow many? a=b, 3+4=7"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    tokens = tok.convert_ids_to_tokens(ids)
    # a word or a digit with the space before it, every other character alone
    story = ["Mia", " has", " 1", "2", " stickers", ".", "\n", "How", " many", "?"]
    assert tokens == story + [" a", "=", "b", ",", " 3", "+", "4", "=", "7"]
    assert tok.decode(ids) == text
    with pytest.raises(ValueError, match="ASCII letters only, got 'two words'"):
        build_word_tokenizer(["two words"])


def test_a_word_the_word_tokenizer_lacks_is_named():
    encoder = PromptEncoder(words=["Mia", "has"], task="arithmetic")
    assert encoder.lengths(["Mia has 3"]) == [3]
    unknown = r"'Ben has 2 cats' has words the in-code word tokenizer does not know: \['Ben', 'cats'\]"
    with pytest.raises(ValueError, match=unknown):
        encoder.ids(["Mia has 3", "Ben has 2 cats"])
    with pytest.raises(ValueError, match=r"characters the tokenizer does not know: \['é'\]"):
        encoder.ids(["Mia has é"])
    with pytest.raises(ValueError, match="in-code word tokenizer has no chat template"):
        PromptEncoder(words=["Mia"], chat_template=True)


def test_arithmetic_prompts_are_words_by_default_and_characters_on_request():
    words = ArithmeticTask(steps=[2], max_value=30, max_operand=10, **SMALL)
    chars = ArithmeticTask(steps=[2], max_value=30, max_operand=10, prompt_tokens="chars", **SMALL)
    assert chars.prompt_vocab_size == 100 and words.prompt_vocab_size > 100
    prompts = [p for split in ("test", "pretrain", "rl") for p in words.prompts(split)]
    assert chars.prompt_len == max(len(p.text) for p in prompts)
    assert words.prompt_len < chars.prompt_len / 3  # the point: a token per word, not per character
    for row, prompt in zip(words.encode_prompts(prompts), prompts, strict=True):
        assert words.tokenizer.decode([i for i in row.tolist() if i]) == prompt.text  # nothing lost
    instruct = ArithmeticTask(steps=[2], max_value=30, max_operand=10, prompt_style="instruct", **SMALL)
    assert instruct.prompt_vocab_size == words.prompt_vocab_size  # one word list covers both styles
    with pytest.raises(ValueError, match="prompt_tokens must be one of .*got 'bytes'"):
        ArithmeticTask(steps=[2], prompt_tokens="bytes", **SMALL)


def test_answer_alphabet_round_trip_and_errors():
    alphabet = AnswerAlphabet(("", "1", "2", "+"), eos=True)
    assert alphabet.encode("1+2", 5) == [1, 3, 2, 0, 0]
    assert alphabet.decode([[1, 3, 2, 0, 1], [1, 1, 1, 1, 1]]) == ["1+2", "11111"]  # after [EOS]: ignored
    with pytest.raises(ValueError, match="outside the alphabet"):
        alphabet.encode("1-2", 5)
    with pytest.raises(ValueError, match="answer length is 2"):
        alphabet.encode("1+2", 2)
    exact = AnswerAlphabet(("1", "2"), eos=False)
    assert exact.decode([[0, 1, 0]]) == ["121"]  # no end marker: value 0 is a digit
    with pytest.raises(ValueError, match="answer length is 3"):
        exact.encode("12", 3)
    with pytest.raises(ValueError, match="distinct single characters"):
        AnswerAlphabet(("", "1", "12"), eos=True)


def test_unknown_characters_in_a_prompt_are_named():
    task = CountdownTask(**SMALL)
    with pytest.raises(ValueError, match=r"does not know: \['é'\]"):
        task.encode_prompts([Prompt("Numbers: [3, 7, é]", "numbers_3", task.prompts("test")[0].spec)])
    with pytest.raises(ValueError, match=f"35 tokens long, more than prompt_len={task.prompt_len}"):
        task.encode_prompts([Prompt("1" * 35, "numbers_3", task.prompts("test")[0].spec)])


def test_chat_template_prompts_in_the_models_own_ids(chat_dir):
    tok = bpe_tokenizer()
    task = CountdownTask(**SMALL, prompt_style="instruct", tokenizer=chat_dir)
    assert task.encoder.chat_template and task.prompt_vocab_size == len(tok)
    prompts = task.prompts("test")[:5]
    cond = task.encode_prompts(prompts)
    user, assistant = tok.convert_tokens_to_ids(["<|user|>", "<|assistant|>"])
    for p, row in zip(prompts, cond, strict=True):
        text = tok.apply_chat_template(
            [{"role": "user", "content": p.text}], tokenize=False, add_generation_prompt=True
        )
        ids = tok(text, add_special_tokens=False)["input_ids"]
        n = int((row != 0).sum())
        assert row[:n].tolist() == ids and (row[n:] == 0).all()  # right-padded with 0 (the pad id)
        assert ids[0] == user and ids[-2] == assistant  # "<|assistant|>" then "\n": the answer starts next
        assert tok.decode(ids) == text and n < len(text)  # BPE merges: fewer tokens than characters
    assert task.prompt_len == max(
        len(ids) for ids in task.encoder.ids([p.text for s in ("pretrain", "rl", "test") for p in task.prompts(s)])
    )
    # answers map onto single tokens of the model's vocabulary; [EOS] onto its eos token
    assert task.data_token_ids[0] == tok.eos_token_id
    assert task.data_token_ids[1:] == [tok.convert_tokens_to_ids(c) for c in "0123456789+-*/()"]
    # the verifier reads data values, whatever the tokenizer
    batch = task.sample_data(8, torch.Generator().manual_seed(0))
    assert bool(task.correct(batch.x1, batch.prompts).all())
    raw = CountdownTask(**SMALL, tokenizer=chat_dir, chat_template=False)
    p = raw.prompts("test")[0]
    assert raw.encode_prompts([p])[0, : len(tok(p.text)["input_ids"])].tolist() == tok(p.text)["input_ids"]


def test_sudoku_and_arithmetic_take_the_chat_template_too(chat_dir):
    sudoku = SudokuTask(prompt_style="d1", tokenizer=chat_dir)
    arithmetic = ArithmeticTask(**SMALL, prompt_style="instruct", tokenizer=chat_dir)
    tok = bpe_tokenizer()
    assert sudoku.data_token_ids == [tok.convert_tokens_to_ids(c) for c in "1234"]
    for task in (sudoku, arithmetic):
        cond = task.encode_prompts(task.prompts("test")[:3])
        assert (cond[:, 0] == tok.convert_tokens_to_ids("<|user|>")).all()


def test_missing_chat_template_is_named(tmp_path):
    bpe_tokenizer(template=None).save_pretrained(tmp_path / "plain")
    with pytest.raises(ValueError, match="has no chat template.*chat_template: false"):
        CountdownTask(**SMALL, tokenizer=str(tmp_path / "plain"))
    CountdownTask(**SMALL, tokenizer=str(tmp_path / "plain"), chat_template=False)  # raw prompts: fine
    with pytest.raises(ValueError, match="in-code character tokenizer has no chat template"):
        CountdownTask(**SMALL, chat_template=True)


def test_a_tokenizer_without_the_tasks_symbols_is_named(tmp_path):
    words = {
        w: i for i, w in enumerate(["<pad>", "<mask>", "<eos>", "<unk>", "Numbers:", "Target:"] + list("0123456789"))
    }
    core = Tokenizer(models.WordLevel(vocab=words, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token="<pad>", mask_token="<mask>", eos_token="<eos>", unk_token="<unk>"
    )
    tok.save_pretrained(tmp_path / "words")
    with pytest.raises(ValueError, match=r"no single token for the answer symbol\(s\) '\+'.*'\('"):
        CountdownTask(**SMALL, tokenizer=str(tmp_path / "words"), chat_template=False)


def test_a_real_token_with_id_0_is_refused(tmp_path):
    # "<|user|>" is id 0 and the pad token is id 4: a templated prompt would start with "padding"
    bpe_tokenizer(
        specials=["<|user|>", "<mask>", "<eos>", "<unk>", "<pad>", "<|assistant|>", "<|end|>"]
    ).save_pretrained(tmp_path / "zero")
    with pytest.raises(ValueError, match="token '<\\|user\\|>' with id 0.*pad id is 4"):
        CountdownTask(**SMALL, tokenizer=str(tmp_path / "zero"))


def test_a_tokenizer_folder_that_is_not_one_is_named(tmp_path):
    with pytest.raises(ValueError, match="is not a directory"):
        CountdownTask(**SMALL, tokenizer=str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no tokenizer files"):
        CountdownTask(**SMALL, tokenizer=str(tmp_path / "empty"))


def test_sample_dump_is_readable(tmp_path):
    task = CountdownTask(**SMALL)
    spec = CountdownProblem((3, 7, 25), 46, "25+3*7")
    prompts = [Prompt("Numbers: [3, 7, 25]\nTarget: 46", "numbers_3", spec)] * 2
    x1 = torch.tensor([task.alphabet.encode(a, task.seq_len) for a in ("25+3*7", "25+3+7")])
    text = task.dump_samples(x1, prompts, tmp_path / "dump" / "samples.txt")
    assert (tmp_path / "dump" / "samples.txt").read_text() == text
    assert text.splitlines()[:5] == [
        "[0] numbers_3 | correct | reward 1.000 | format ok",
        "prompt:  Numbers: [3, 7, 25]",
        "         Target: 46",
        "answer:  '25+3*7'",
        "verdict: = 46, the target",
    ]
    assert "[1] numbers_3 | wrong | reward 0.452 | format ok" in text and "verdict: = 35, not 46" in text
    records = task.records(x1, prompts)
    assert [r.answer for r in records] == ["25+3*7", "25+3+7"] and records[1].verdict.reward == pytest.approx(
        0.1 + 0.2 + 0.2 * 35 / 46
    )


def test_tasks_plug_into_a_tiny_masked_lm():
    from dflow.lightning import HFMaskedLM
    from dflow.paths import MaskSource, MixturePath

    tiny = {"model_type": "bert", "hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2}  # random
    for task in (CountdownTask(**SMALL), SudokuTask()):
        model = HFMaskedLM(config={**tiny, "intermediate_size": 32}).build(
            task, MixturePath(MaskSource(task.vocab_size))
        )
        batch = task.sample_data(2, torch.Generator().manual_seed(0))
        logits = model(batch.x1, torch.zeros(2), batch.cond)
        assert logits.shape == (2, task.seq_len, task.vocab_size)
