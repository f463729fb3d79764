"""``python -m oat`` (and ``torchrun -m oat``) run the ``oat`` command."""

import sys

from .cli import main

sys.exit(main())
