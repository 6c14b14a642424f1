"""``python -m zoo``: the ``zoo`` console script."""

import sys

from zoo.cli import main

sys.exit(main())
