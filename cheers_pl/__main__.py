"""`python -m cheers_pl <command> ...`: a thin shell over `cheers_pl.cli` (R12)."""

import sys

from cheers_pl.cli import main

if __name__ == "__main__":
    sys.exit(main())
