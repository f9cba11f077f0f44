"""Command-line arguments that name ``RLModule``'s settings blocks (``dflow.lightning.rl_config``), checked or
rewritten before LightningCLI parses them."""

from __future__ import annotations

from pathlib import Path

import yaml

from dflow.lightning.rl_config import MOVED, RECORDS


def nulls_as_mappings(args: list[str]) -> list[str]:
    """``--model.init_args.optim.minibatch_size=null`` as ``--model.init_args.optim={minibatch_size: null}``.

    jsonargparse (4.53) refuses a dotted null for a field of a dataclass inside a ``class_path``
    model ("Given value: NestedArg(key='optim.minibatch_size', val=None)"), while the mapping form,
    which it merges with the block's other fields, works; so the CLI rewrites the one into the other."""
    out = []
    for arg in args:
        key, eq, value = arg.partition("=")
        block, _, field = key.removeprefix("--model.init_args.").partition(".")
        if eq and key.startswith("--model.init_args.") and block in RECORDS and field and "." not in field:
            if value.strip().lower() in ("null", "none", "~"):
                arg = f"--model.init_args.{block}={{{field}: null}}"
        out.append(arg)
    return out


def check_moved_rl_settings(args: list[str]) -> None:
    """An RL recipe or override that uses ``RLModule``'s flat names of earlier versions (``lr``,
    ``group_size``, ``eval_every_n_steps``, ...) is refused with the block each one moved to; the
    parser alone would only say "Option 'lr' is not accepted"."""
    class_path, keys = "", []  # the model's class (last one named wins, as in the parser) and its flat keys
    for i, arg in enumerate(args):
        if arg == "--config" and i + 1 < len(args) or arg.startswith("--config="):
            name = args[i + 1] if arg == "--config" else arg.partition("=")[2]
            try:
                config = yaml.safe_load(Path(name).read_text()) or {}
            except (OSError, yaml.YAMLError):
                continue  # the parser reports a missing or broken file itself
            model = config.get("model") if isinstance(config, dict) else None
            if isinstance(model, dict):
                class_path = str(model.get("class_path", class_path))
                init_args = model.get("init_args")
                keys += [(k, name) for k in init_args if k in MOVED] if isinstance(init_args, dict) else []
        elif arg.startswith(("--model=", "--model.class_path=")):
            class_path = arg.partition("=")[2]
        elif arg.startswith("--model.init_args."):
            key = arg.removeprefix("--model.init_args.").partition("=")[0]
            keys += [(key, "the command line")] if key in MOVED else []
    if keys and class_path.rpartition(".")[2] == "RLModule":
        moved = "; ".join(f"{k} -> {MOVED[k]} (in {where})" for k, where in keys)
        raise ValueError(
            f"RLModule's settings are grouped in blocks: {moved}. Write them as `optim: {{lr: 1.0e-4}}` in the "
            "recipe or --model.init_args.optim.lr=1e-4 (docs/recipes.md, 'The settings blocks of an RL recipe')"
        )
