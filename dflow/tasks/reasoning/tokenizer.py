"""Tokenizers of the reasoning tasks: one built in code for tiny bases, or any local HF tokenizer.

The in-code tokenizer is character level: a ``tokenizers`` BPE model whose vocabulary is the
characters and which has no merges (so every character is one token; 4x faster than a WordLevel model
behind a one-character split), wrapped as a ``transformers`` ``PreTrainedTokenizerFast`` (nothing is
downloaded). Vocabulary (id: token): 0 ``[PAD]``, 1 ``[MASK]``, 2 ``[EOS]``, 3 ``[UNK]``, 4 the
newline, then the 95 printable ASCII characters from the space (id 5) to ``~`` (id 99). ``[PAD]`` is
id 0 so that padded prompts and the all-zero null prompt of classifier-free guidance coincide. A
character outside the vocabulary becomes ``[UNK]`` (the prompt encoders refuse it). ``decode`` joins
characters with nothing between them, so ``decode(encode(text)) == text`` for ASCII text.

``load_tokenizer(folder)`` loads a real model's tokenizer from a local folder (never the hub), for
prompts in an instruct model's own ids and chat template.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tokenizers import Tokenizer, decoders, models
from transformers import PreTrainedTokenizerFast

CHAR_SPECIAL_TOKENS = ("[PAD]", "[MASK]", "[EOS]", "[UNK]")
CHARACTERS = ("\n",) + tuple(chr(c) for c in range(32, 127))
CHAR_VOCAB: dict[str, int] = {tok: i for i, tok in enumerate(CHAR_SPECIAL_TOKENS + CHARACTERS)}


def build_char_tokenizer(model_max_length: int = 4096) -> PreTrainedTokenizerFast:
    """A fresh character-level tokenizer with the vocabulary above (``pad_token_id == 0``)."""
    core = Tokenizer(models.BPE(vocab=dict(CHAR_VOCAB), merges=[], unk_token="[UNK]"))
    core.decoder = decoders.Fuse()  # concatenate, no spaces between characters
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token="[PAD]",
        mask_token="[MASK]",
        eos_token="[EOS]",
        unk_token="[UNK]",
        model_max_length=model_max_length,
    )


# files a saved tokenizer folder holds (AutoTokenizer may build an empty tokenizer from config.json alone)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "vocab.txt", "tokenizer.model")


def load_tokenizer(folder: str | Path) -> Any:
    """The tokenizer saved in ``folder`` (``AutoTokenizer``, local files only).

    ``ValueError`` naming the folder when it is not a directory, holds no tokenizer files, or does
    not load.
    """
    from transformers import AutoTokenizer

    path = Path(folder).expanduser()
    if not path.is_dir():
        raise ValueError(f"tokenizer={str(folder)!r} is not a directory with a saved tokenizer (the hub is never used)")
    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise ValueError(f"tokenizer={str(folder)!r} holds no tokenizer files (none of {', '.join(TOKENIZER_FILES)})")
    try:
        return AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as err:
        raise ValueError(f"tokenizer={str(folder)!r} does not load ({type(err).__name__}: {err})") from err
