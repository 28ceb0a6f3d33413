"""`python -m cheers_pl <command> ...`: a thin shell over `cheers_pl.cli` (R12)."""

from cheers_pl.cli import main
from cheers_pl.process import exit_process

if __name__ == "__main__":
    exit_process(main())
