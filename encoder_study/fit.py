"""``python -m encoder_study.fit``: the command-line trainer (``cli.py`` holds it; see there)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
