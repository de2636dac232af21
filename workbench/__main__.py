"""`python -m workbench …`: the `workbench` CLI without the installed console script (e.g. from a
source checkout on `PYTHONPATH`)."""

import sys

from workbench.cli import main

sys.exit(main())
