"""`python -m roomstate` is the `roomstate` command."""

from roomstate.cli import main

main()
