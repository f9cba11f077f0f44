"""JSON descriptions of library objects (paths, sources, schedulers, tasks) for ``dflow_meta.json``
and run records: :func:`describe` writes ``{"class_path", "init_args"}``, :func:`instantiate`
rebuilds the object from it."""

from __future__ import annotations

import importlib
import inspect
from typing import Any

import torch


def describe(obj: Any) -> Any:
    """A JSON description ``{"class_path", "init_args"}`` of a path, source, scheduler or task.

    ``init_args`` holds each ``__init__`` parameter that the object keeps as an attribute of the
    same name (nested parts described recursively); parameters it does not keep are listed under
    ``"not_recorded"`` (they had to be left at, or assumed to be, their defaults).
    :func:`instantiate` rebuilds the object from the description.
    """
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, (list, tuple)):
        return [describe(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return obj.tolist()  # only small ones get here (_describable)
    cls = type(obj)
    init_args: dict[str, Any] = {}
    missing: list[str] = []
    for name, param in inspect.signature(cls.__init__).parameters.items():
        if name == "self" or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        value = getattr(obj, name, inspect.Parameter.empty)
        if value is inspect.Parameter.empty or not _describable(value):
            missing.append(name)
        else:
            init_args[name] = describe(value)
    out: dict[str, Any] = {"class_path": f"{cls.__module__}.{cls.__qualname__}", "init_args": init_args}
    if missing:
        out["not_recorded"] = missing
    return out


def _describable(value: Any) -> bool:
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    if isinstance(value, (list, tuple)):
        return all(_describable(v) for v in value)
    if isinstance(value, torch.Tensor):  # a metric path's distances: recorded while they stay small
        return value.numel() <= MAX_RECORDED_TENSOR
    # library objects (sources, schedulers) are described recursively; other objects are not
    return type(value).__module__.startswith("dflow.")


MAX_RECORDED_TENSOR = 65_536  # a [256, 256] distance matrix; larger ones are listed under not_recorded


def instantiate(description: Any) -> Any:
    """Rebuild an object from :func:`describe`'s output (``class_path`` dicts, recursively)."""
    if isinstance(description, list):
        return [instantiate(v) for v in description]
    if not isinstance(description, dict) or "class_path" not in description:
        return description
    module_name, _, class_name = description["class_path"].rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"class_path={description['class_path']!r} cannot be imported: {err}") from err
    kwargs = {k: instantiate(v) for k, v in description.get("init_args", {}).items()}
    return cls(**kwargs)
