"""``python -m motion_core`` runs the command line (see ``motion_core.cli``)."""

import sys

from .cli import main

sys.exit(main())
