"""``python -m hf_gradprune``: the ``hf-gradprune`` command line."""

import sys

from .command_line import main

sys.exit(main())
