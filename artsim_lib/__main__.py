"""``python -m artsim_lib``: the ``artsim`` command."""

import sys

from artsim_lib.cli import main

sys.exit(main())
