"""``python -m metacli``: the same Typer app as the ``metacli`` console script."""

from metacli.cli import main

main()
