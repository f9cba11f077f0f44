"""Tokenizers of the reasoning tasks: one built in code for tiny bases, or any local HF tokenizer.

The in-code tokenizer is character level: a ``tokenizers`` BPE model whose vocabulary is the
characters and which has no merges (so every character is one token; 4x faster than a WordLevel model
behind a one-character split), wrapped as a ``transformers`` ``PreTrainedTokenizerFast`` (nothing is
downloaded). Vocabulary (id: token): 0 ``[PAD]``, 1 ``[MASK]``, 2 ``[EOS]``, 3 ``[UNK]``, 4 the
newline, then the 95 printable ASCII characters from the space (id 5) to ``~`` (id 99). ``[PAD]`` is
id 0 so that padded prompts and the all-zero null prompt of classifier-free guidance coincide. A
character outside the vocabulary becomes ``[UNK]`` (the prompt encoders refuse it). ``decode`` joins
characters with nothing between them, so ``decode(encode(text)) == text`` for ASCII text.

The in-code word tokenizer (``build_word_tokenizer(words)``) keeps those 100 ids and adds, for each
of a task's words, the word and the word after a space, then the ten digits after a space. Text is
cut into pieces (a run of letters with the space before it, a digit with the space before it, any
other character) and each piece is one token, so a prompt of English words costs about a token per
word instead of one per character (a word the list lacks is ``[UNK]``, which the prompt encoders
refuse). ``decode(encode(text)) == text`` holds for it too.

``load_tokenizer(folder)`` loads a real model's tokenizer from a local folder (never the hub), for
prompts in an instruct model's own ids and chat template.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

CHAR_SPECIAL_TOKENS = ("[PAD]", "[MASK]", "[EOS]", "[UNK]")
CHARACTERS = ("\n",) + tuple(chr(c) for c in range(32, 127))
CHAR_VOCAB: dict[str, int] = {tok: i for i, tok in enumerate(CHAR_SPECIAL_TOKENS + CHARACTERS)}


def build_char_tokenizer(model_max_length: int = 4096) -> PreTrainedTokenizerFast:
    """A fresh character-level tokenizer with the vocabulary above (``pad_token_id == 0``)."""
    core = Tokenizer(models.BPE(vocab=dict(CHAR_VOCAB), merges=[], unk_token="[UNK]"))
    core.decoder = decoders.Fuse()  # concatenate, no spaces between characters
    return _wrap(core, model_max_length)


def _wrap(core: Tokenizer, model_max_length: int) -> PreTrainedTokenizerFast:
    """``core`` as a ``transformers`` tokenizer with the in-code special tokens."""
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token="[PAD]",
        mask_token="[MASK]",
        eos_token="[EOS]",
        unk_token="[UNK]",
        model_max_length=model_max_length,
    )


WORD_PIECES = r" ?[A-Za-z]+| ?[0-9]|[\s\S]"  # how the word tokenizer cuts text: every character lands in one piece


def build_word_tokenizer(words: Sequence[str], model_max_length: int = 4096) -> PreTrainedTokenizerFast:
    """A fresh word-level tokenizer (module doc): the character vocabulary (ids 0-99, ``[PAD]`` 0),
    then ``w`` and ``" " + w`` for each of ``words`` in order, then ``" 0"`` ... ``" 9"``.

    ``ValueError`` naming a word that is not a run of ASCII letters (it could never be one piece).
    """
    vocab = dict(CHAR_VOCAB)
    for word in words:
        if not isinstance(word, str) or re.fullmatch(r"[A-Za-z]+", word) is None:
            raise ValueError(f"build_word_tokenizer: every word must be ASCII letters only, got {word!r}")
        for piece in (word, " " + word):
            vocab.setdefault(piece, len(vocab))
    for digit in "0123456789":
        vocab.setdefault(" " + digit, len(vocab))
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex(WORD_PIECES), behavior="isolated")
    core.decoder = decoders.Fuse()  # the pieces carry their spaces: concatenate
    return _wrap(core, model_max_length)


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
