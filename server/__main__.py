"""``python -m phpo.server`` = ``phpo server``."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
