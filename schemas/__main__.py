"""``python -m schemas export-json-schema [PATH]``: write the contract's JSON Schema."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from schemas.jsonschema import SCHEMA_PATH, export


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m schemas")
    commands = parser.add_subparsers(dest="command", required=True)
    export_cmd = commands.add_parser("export-json-schema", help="write the JSON Schema of the contract")
    export_cmd.add_argument("path", nargs="?", type=Path, default=SCHEMA_PATH)
    args = parser.parse_args(argv)
    print(export(args.path))
    return 0


if __name__ == "__main__":
    sys.exit(main())
