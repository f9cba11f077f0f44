"""Token ids across tokenizers: a model saved with its own tokenizer numbers tokens differently from a
task's, so :class:`~dflow.lightning.hf_builders.HFMaskedLM` translates the task's ids to the model's."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any


def load_model_tokenizer(directory: Path, trust_remote_code: bool = False) -> Any:
    """The tokenizer saved beside a masked LM; ``ValueError`` with the fix when there is none."""
    from transformers import AutoTokenizer

    fix = (
        "save the model's tokenizer beside it (tokenizer.save_pretrained), or set tokenizer: task if the model "
        "was trained on the task's own token ids"
    )
    # AutoTokenizer may build an empty tokenizer from config.json alone: ask for the tokenizer's own files
    files = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "vocab.txt", "tokenizer.model", "spiece.model")
    if not any((Path(directory) / name).is_file() for name in files):
        raise ValueError(f"HFMaskedLM: {str(directory)!r} holds no tokenizer (none of {', '.join(files)}); {fix}")
    try:
        return AutoTokenizer.from_pretrained(directory, local_files_only=True, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        raise ValueError(
            f"HFMaskedLM: the tokenizer in {str(directory)!r} does not load ({type(err).__name__}: {err}); {fix}"
        ) from err


SPECIAL_ROLES = ("pad_token", "mask_token", "unk_token", "sep_token", "cls_token", "bos_token", "eos_token")


def translate_token_ids(
    task_tokenizer: Any, model_tokenizer: Any, where: str = "model", role_ids: Mapping[str, int] | None = None
) -> list[int]:
    """Entry ``i``: the model tokenizer's id for the task tokenizer's token ``i``.

    A special token maps to the model's token of the same role (pad to pad, mask to mask, ...);
    any other token to the model's single id for its text (tried as is, then after a space, as a
    BPE tokenizer writes a word inside a sentence). ``ValueError`` naming the token otherwise.
    ``role_ids`` gives a role's model id where the tokenizer does not declare it (LLaDA's tokenizer
    declares no mask token; its config's ``mask_token_id`` does: ``{"mask_token": 126336}``)."""
    roles = {getattr(task_tokenizer, role): role for role in SPECIAL_ROLES if getattr(task_tokenizer, role, None)}
    table = []
    for i, token in enumerate(task_tokenizer.convert_ids_to_tokens(list(range(len(task_tokenizer))))):
        if token in roles:
            model_id = (role_ids or {}).get(roles[token], getattr(model_tokenizer, roles[token] + "_id", None))
            if model_id is None:
                raise ValueError(
                    f"HFMaskedLM: the task's {roles[token]} {token!r} has no counterpart in the tokenizer of {where} "
                    f"(its {roles[token]} is None); use a model whose tokenizer has one"
                )
            table.append(int(model_id))
            continue
        for text in (token, " " + token):
            ids = model_tokenizer(text, add_special_tokens=False)["input_ids"]
            if len(ids) == 1 and ids[0] != model_tokenizer.unk_token_id:  # an unknown word is not a translation
                table.append(int(ids[0]))
                break
        else:
            raise ValueError(
                f"HFMaskedLM: the task's token {token!r} (id {i}) is not one token of the tokenizer of {where} "
                f"(it encodes to {ids}); use a model whose tokenizer holds it, or tokenizer: task"
            )
    return table
