"""``dflow export RUN_OR_CKPT OUT_DIR``: a run's trained denoiser as a model folder."""

from __future__ import annotations

import argparse
from collections.abc import Sequence


def export_main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="dflow export",
        description="Write a run's trained denoiser (PretrainModule or RLModule) as a model folder that "
        "dflow sample, a recipe's PretrainedDenoiser and transformers' from_pretrained load.",
    )
    parser.add_argument(
        "source", help="a run folder (runs/<name>/version_<n>: its checkpoints/last.ckpt) or a checkpoint"
    )
    parser.add_argument("out", help="the model folder to write (created; its files are overwritten)")
    opts = parser.parse_args(list(argv))
    from dflow.lightning.export import export_run

    out = export_run(opts.source, opts.out)
    print(f"exported {opts.source} to {out}")
    return 0
