"""``python -m bayestensor`` runs the command line (also under ``torchrun``)."""

import sys

from .cli.main import main

sys.exit(main())
