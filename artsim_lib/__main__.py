"""``python -m artsim_lib``: the ``artsim`` command."""
import sys

from .cli import main

sys.exit(main())
