"""`python -m mtllora.bench`: see `mtllora.bench.cli`."""

from .cli import main

main()
