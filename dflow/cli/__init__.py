"""The ``dflow`` console script (also ``python -m dflow.cli``).

- ``dflow fit --config recipes/<task>/<recipe>.yaml [--key=value ...]``: LightningCLI (also
  ``validate``; :mod:`dflow.lightning.cli`); recipes name the model and data modules by
  ``class_path``, overrides use omegaconf interpolation. Defaults: CSV logs under ``runs/``, a rich
  progress bar, seed 0.
- ``dflow sample``, ``dflow export``, ``dflow demo``, ``dflow ablate``: registered in
  :data:`SUBCOMMANDS` and dispatched before LightningCLI.

Dependencies point down only: this package imports its subcommands (lazily, so ``dflow sample``
does not load the ablation code), and they import :mod:`dflow.lightning` and below, never this.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence

from dflow.cli.sample import default_path, evaluate_base
from dflow.lightning.cli import DFlowCLI, cli_settings, run_lightning_cli

__all__ = ["SUBCOMMANDS", "DFlowCLI", "cli_settings", "default_path", "evaluate_base", "main", "run_lightning_cli"]


def sample_main(argv: Sequence[str]) -> int:
    from dflow.cli.sample import sample_main as sample

    return sample(argv)


def export_main(argv: Sequence[str]) -> int:
    from dflow.cli.export import export_main as export

    return export(argv)


def demo_main(argv: Sequence[str]) -> int:
    from dflow.demo import main as demo

    return demo(argv)


def ablate_main(argv: Sequence[str]) -> int:
    from dflow.ablate.cli import main as ablate

    return ablate(list(argv))


SUBCOMMANDS: dict[str, Callable[[Sequence[str]], int]] = {
    "sample": sample_main,
    "export": export_main,
    "demo": demo_main,
    "ablate": ablate_main,
}
# <<< end of the subcommand registry

USAGE = """usage: dflow {fit,validate,sample,...} ...

  dflow fit --config recipes/<task>/<recipe>.yaml [--section.key=value ...]   train (LightningCLI)
  dflow sample --checkpoint DIR --out grid.png [--steps --guidance --num]    sample a base, print accuracy
"""


def main(args: Sequence[str] | None = None) -> int:
    """Entry point of the ``dflow`` console script; ``args`` defaults to ``sys.argv[1:]``.

    The working directory goes first on ``sys.path`` (as ``python -m`` would put it), so a recipe's
    ``class_path`` or a reward's ``source`` can name the user's own module next to the recipe
    (``mymodule.MyReward``); a console script otherwise sees only installed packages."""
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    argv = list(sys.argv[1:] if args is None else args)
    if argv and argv[0] in SUBCOMMANDS:
        return SUBCOMMANDS[argv[0]](argv[1:])
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE + "  " + ", ".join(f"dflow {name}" for name in SUBCOMMANDS) + " (see `dflow <name> --help`)\n")
        if not argv:
            return 2
    run_lightning_cli(None if args is None else argv)
    return 0
