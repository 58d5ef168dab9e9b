"""``python -m autoprune`` runs the ``autoprune`` command."""

import sys

from autoprune.cli import main

sys.exit(main())
