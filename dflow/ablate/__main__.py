"""``python -m dflow.ablate GRID.yaml ...`` (the same as ``dflow ablate``)."""

import sys

from dflow.ablate.cli import main

sys.exit(main())
