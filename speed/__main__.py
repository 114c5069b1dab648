"""`python -m speed` (from the repository root): see `speed.cli`."""

from .cli import main

main()
