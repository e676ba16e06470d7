"""``python -m phpo.evaluation_container ...`` = ``phpo agent ...``."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
