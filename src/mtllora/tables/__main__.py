"""`python -m mtllora.tables`: see the package docstring."""

from . import main

main()
