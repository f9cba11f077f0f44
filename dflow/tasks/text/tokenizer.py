"""The sudoku tokenizer: a ``transformers`` fast tokenizer around a ``tokenizers`` WordLevel model,
built in code (nothing is downloaded).

Vocabulary (id: token): 0 ``[PAD]``, 1 ``[MASK]``, 2 ``[SEP]``, 3 ``[CLS]``, 4 ``[UNK]``,
5 ``_`` (blank cell), 6 ``|`` (row separator), 7..10 the digits ``1``..``4``. ``[PAD]`` is id 0 so
that padded prompts and the all-zero null prompt of classifier-free guidance coincide.
Text is split on whitespace; no special tokens are added around it.
"""

from __future__ import annotations

from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

SPECIAL_TOKENS = ("[PAD]", "[MASK]", "[SEP]", "[CLS]", "[UNK]")
BLANK_TOKEN = "_"
ROW_SEPARATOR = "|"
DIGITS = ("1", "2", "3", "4")
VOCAB: dict[str, int] = {tok: i for i, tok in enumerate(SPECIAL_TOKENS + (BLANK_TOKEN, ROW_SEPARATOR) + DIGITS)}


def build_sudoku_tokenizer(model_max_length: int = 64) -> PreTrainedTokenizerFast:
    """A fresh tokenizer with the vocabulary above (``pad_token_id == 0``)."""
    core = Tokenizer(models.WordLevel(vocab=dict(VOCAB), unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token="[PAD]",
        mask_token="[MASK]",
        sep_token="[SEP]",
        cls_token="[CLS]",
        unk_token="[UNK]",
        model_max_length=model_max_length,
    )
