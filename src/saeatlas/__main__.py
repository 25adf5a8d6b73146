"""`python -m saeatlas` runs the command line (also under `torchrun -m saeatlas`)."""

import sys

from .cli import main

sys.exit(main())
