"""The `wa-controller` command."""

from __future__ import annotations

import argparse
import sys

from controller import crd


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="wa-controller", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("crd", help="print the WAAccount CustomResourceDefinition (YAML)")
    args = parser.parse_args(argv)
    if args.command == "crd":
        sys.stdout.write(crd.render())
    return 0
