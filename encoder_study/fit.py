"""``python -m encoder_study.fit``: the command-line trainer (``interface/cli.py`` holds it; see there)."""

import sys

from .interface.cli import main

if __name__ == "__main__":
    sys.exit(main())
