"""The `roomstate` command."""

from __future__ import annotations

import argparse


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="roomstate", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("demo", help="show two CRDT replicas of a room converging")
    args = parser.parse_args(argv)
    if args.command == "demo":
        from node.demo import main as demo

        demo()
