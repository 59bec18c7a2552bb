"""``python -m hf_gradprune``: the ``hf-gradprune`` command line."""

import sys

from .cli.main import main

sys.exit(main())
