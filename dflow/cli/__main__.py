"""``python -m dflow.cli``: the ``dflow`` command."""

import sys

from dflow.cli import main

sys.exit(main())
