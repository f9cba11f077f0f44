"""One grid run in its own process: ``python -m dflow.ablate.worker RUN_DIR/run.json``.

Under ``--trainer.strategy=ddp`` Lightning starts the other ranks by running this same command
again, which is why a run is a process of its own (see :mod:`dflow.ablate.runner`).
"""

from __future__ import annotations

import sys
from pathlib import Path

from dflow.ablate.execute import execute
from dflow.ablate.files import read_json


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) != 1:
        print("usage: python -m dflow.ablate.worker RUN_DIR/run.json", file=sys.stderr)
        return 2
    run_file = Path(argv[0]).resolve()
    return execute(read_json(run_file, "run file"), run_file.parent)


if __name__ == "__main__":
    sys.exit(main())
