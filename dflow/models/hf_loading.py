"""Load a masked LM or a custom-code masked dLLM (LLaDA, Dream) from a local folder, or refuse it.

Two kinds of folder are supported:

- a masked LM that ``transformers`` ships (BERT, RoBERTa, ...): ``config.json`` names a
  ``model_type`` that ``AutoModelForMaskedLM`` knows, and it is loaded through that class;
- a **custom-code** bidirectional dLLM: ``config.json`` has an ``auto_map`` that points at modelling
  files inside the folder (LLaDA: ``AutoModel -> modeling_llada.LLaDAModelLM``; Dream:
  ``AutoModel -> modeling_dream.DreamModel``). Loading it runs that code, so it needs an explicit
  ``trust_remote_code=True``; without it the folder is refused *before* any of its code is imported.

Everything is read with ``local_files_only=True``: the hub is never contacted. A custom-code model
is checked once after loading (:func:`check_bidirectional`): it must return ``.logits`` and its
logits at the first position must depend on a later token. A causal LM fails that check, since its
first position never sees the future, and the error names the class that was found.

Example::

    spec = read_folder_config("ckpt/llada")         # config.json as a dict; runs no code
    model, custom_code = load_masked_model("ckpt/llada", trust_remote_code=True)
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import torch
from transformers import PreTrainedModel

# the recipe field that opts in, named in every refusal that it would fix
REMOTE_CODE_FIELD = "model.init_args.denoiser.init_args.trust_remote_code: true"
# auto_map entries tried for a custom-code folder, in this order. LLaDA maps AutoModel (and
# AutoModelForCausalLM) to its bidirectional LM; Dream maps AutoModel. A class found through
# AutoModelForCausalLM is kept only if check_bidirectional passes.
REMOTE_AUTO_CLASSES = ("AutoModelForMaskedLM", "AutoModel", "AutoModelForCausalLM")
# config fields that bound the sequence a model can hold, in the order they are looked for
# (LLaDA names it max_sequence_length, GPT-2 n_positions, most others max_position_embeddings)
LENGTH_FIELDS = ("max_position_embeddings", "max_sequence_length", "n_positions")


def read_folder_config(folder: str | os.PathLike) -> dict[str, Any]:
    """``config.json`` of a model folder as a plain dict; imports and runs nothing from the folder.

    Raises:
        FileNotFoundError: naming the path when it is not a directory.
        ValueError: naming the folder when it has no readable ``config.json``.
    """
    if not os.path.isdir(folder):
        raise FileNotFoundError(
            f"model path {os.fspath(folder)!r} is not a directory with a saved masked LM "
            "(only local checkpoints are loaded, never the hub)"
        )
    file = Path(folder) / "config.json"
    if not file.is_file():
        raise ValueError(f"model path {os.fspath(folder)!r} has no config.json (not a save_pretrained folder)")
    try:
        config = json.loads(file.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{str(file)!r} is not valid JSON: {err}") from err
    if not isinstance(config, dict):
        raise ValueError(f"{str(file)!r} must hold a JSON object, got {type(config).__name__}")
    return config


def code_references(config: Mapping[str, Any], folder: str | os.PathLike) -> dict[str, str]:
    """The ``auto_map`` of a folder's ``config.json``: auto class -> ``"module.Class"`` (``{}`` without
    one; a tokenizer's ``[slow, fast]`` pair is joined with ``", "``).

    Raises:
        ValueError: a malformed entry, or one that points at code in another repository
            (``"owner/repo--module.Class"``), which ``local_files_only`` cannot fetch.
    """
    auto_map = config.get("auto_map")
    where = os.fspath(folder)
    if not auto_map:
        return {}
    if not isinstance(auto_map, Mapping):
        raise ValueError(f"config.json auto_map of {where!r} must be an object, got {auto_map!r}")
    references = {}
    for auto_class, reference in auto_map.items():
        parts = reference if isinstance(reference, list) else [reference]
        if not parts or not all(p is None or isinstance(p, str) for p in parts):
            raise ValueError(f"config.json auto_map.{auto_class} of {where!r} must be a string, got {reference!r}")
        joined = ", ".join(p for p in parts if p)
        if "--" in joined:
            raise ValueError(
                f"config.json auto_map.{auto_class}={joined!r} of {where!r} points at code in another repository, "
                "which is never downloaded; copy that file into the folder and write the entry as 'module.Class'"
            )
        references[auto_class] = joined
    return references


def remote_class_entry(config: Mapping[str, Any], folder: str | os.PathLike) -> tuple[str, str] | None:
    """``(auto class, "module.Class")`` of the folder's own model class, or ``None`` when its
    ``auto_map`` names no model class (plain ``transformers`` model classes).

    Raises:
        ValueError: the ``auto_map`` names model classes, but none of :data:`REMOTE_AUTO_CLASSES`
            (naming what it has); or an entry is malformed (:func:`code_references`).
    """
    models = {k: v for k, v in code_references(config, folder).items() if k.startswith("AutoModel")}
    for auto_class in REMOTE_AUTO_CLASSES:
        if auto_class in models:
            return auto_class, models[auto_class]
    if models:
        raise ValueError(
            f"config.json auto_map of {os.fspath(folder)!r} maps {sorted(models)}, none of which is a masked model; "
            f"supported: {', '.join(REMOTE_AUTO_CLASSES)} (a custom-code bidirectional dLLM such as LLaDA or Dream)"
        )
    return None


def check_remote_code_allowed(config: Mapping[str, Any], folder: str | os.PathLike, trust_remote_code: bool) -> None:
    """Refuse a folder that ships code (any ``auto_map`` entry) unless the recipe opted in; runs none of it."""
    references = code_references(config, folder)
    if references and not trust_remote_code:
        auto_class, reference = remote_class_entry(config, folder) or next(iter(references.items()))
        raise ValueError(
            f"the model folder {os.fspath(folder)!r} ships its own modelling code (config.json auto_map: "
            f"{auto_class} -> {reference}), and loading it runs that code; read the folder's .py files, then opt in "
            f"with `{REMOTE_CODE_FIELD}` (in Python: trust_remote_code=True)"
        )


def masked_lm_types() -> dict[str, str]:
    """``model_type -> class name`` of every masked LM that ``AutoModelForMaskedLM`` loads."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

    return dict(MODEL_FOR_MASKED_LM_MAPPING_NAMES)


def supported_description() -> str:
    known = masked_lm_types()
    shown = ", ".join(sorted(known)[:6])
    return (
        f"supported: masked LMs that AutoModelForMaskedLM loads ({len(known)} model types: {shown}, ...) and "
        "custom-code bidirectional dLLMs (LLaDA, Dream: config.json auto_map with "
        f"{' / '.join(REMOTE_AUTO_CLASSES[:2])}, and `{REMOTE_CODE_FIELD}`)"
    )


def check_masked_lm_type(config: Mapping[str, Any], folder: str | os.PathLike) -> None:
    """A folder without custom code must hold a model type ``AutoModelForMaskedLM`` knows.

    Raises:
        ValueError: naming the class found (``architectures``, else ``model_type``) and the supported ones.
    """
    model_type = config.get("model_type")
    if model_type in masked_lm_types():
        return
    architectures = config.get("architectures") or []
    found = ", ".join(map(str, architectures)) if architectures else f"model_type={model_type!r}"
    raise ValueError(
        f"the model folder {os.fspath(folder)!r} holds {found} (model_type={model_type!r}), which is not a masked "
        f"LM or a masked diffusion model; {supported_description()}"
    )


class LoadedModel(NamedTuple):
    """What :func:`load_masked_model` returns."""

    model: PreTrainedModel
    custom_code: bool  # loaded through the folder's auto_map (its own modelling code)


def load_masked_model(
    folder: str | os.PathLike, trust_remote_code: bool = False, dtype: torch.dtype | None = None
) -> LoadedModel:
    """The model of a local folder, loaded offline, after the checks of the module doc.

    Args:
        folder: a ``save_pretrained`` folder.
        trust_remote_code: allow running the folder's own modelling code (``auto_map``).
        dtype: load the weights in this dtype (``None``: as ``transformers`` defaults, float32).
    """
    config = read_folder_config(folder)
    check_remote_code_allowed(config, folder, trust_remote_code)
    kwargs: dict[str, Any] = {"local_files_only": True}
    if dtype is not None:
        kwargs["dtype"] = dtype
    entry = remote_class_entry(config, folder)
    if entry is None:
        from transformers import AutoModelForMaskedLM

        check_masked_lm_type(config, folder)  # a built-in class (its config may still be the folder's own code)
        model = AutoModelForMaskedLM.from_pretrained(folder, trust_remote_code=trust_remote_code, **kwargs)
        return LoadedModel(model, custom_code=False)
    import transformers

    auto = getattr(transformers, entry[0])
    model = auto.from_pretrained(folder, trust_remote_code=True, **kwargs)
    check_bidirectional(model, int(config.get("vocab_size") or 2))
    return LoadedModel(model, custom_code=True)


def check_bidirectional(model: PreTrainedModel, vocab_size: int) -> None:
    """One forward pass on two 2-token inputs that differ only in their last token: the model must
    return ``.logits`` and its first position must see the difference. A causal LM fails, because
    position 0 attends to itself only; so does a bare encoder that returns hidden states.

    Raises:
        ValueError: naming the class found and the supported ones.
    """
    name = type(model).__name__
    first, other = 0, min(1, vocab_size - 1)
    device = next(model.parameters()).device
    input_ids = torch.tensor([[first, first], [first, other]], device=device)  # [2, 2]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            output = model(input_ids=input_ids)
    finally:
        model.train(was_training)
    logits = getattr(output, "logits", None)
    if not isinstance(logits, torch.Tensor) or logits.dim() != 3:
        raise ValueError(
            f"the custom-code model {name} returns no token logits (its output {type(output).__name__} has no "
            f"[B, L, vocab] .logits); point auto_map at the class with the LM head; {supported_description()}"
        )
    if torch.equal(logits[0, 0], logits[1, 0]):
        raise ValueError(
            f"the custom-code model {name} is causal: its logits at position 0 do not change when a later token "
            f"does, so it cannot fill in masked tokens from both sides; {supported_description()}"
        )


def max_sequence_length(config: Any) -> tuple[str, int] | None:
    """``(field, value)`` of the longest sequence a model config holds, or ``None`` if it sets none."""
    for field in LENGTH_FIELDS:
        value = config.get(field) if isinstance(config, Mapping) else getattr(config, field, None)
        if isinstance(value, int) and not isinstance(value, bool):
            return field, value
    return None
