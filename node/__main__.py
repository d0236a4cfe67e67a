"""`python -m node` is the `roomstate` command."""

from node.cli import main

main()
