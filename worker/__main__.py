"""``python -m worker COMMAND``: the worker's commands."""

from __future__ import annotations

import argparse
import sys


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m worker", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    convert = commands.add_parser("convert", help="convert messages (JSON lines) to Labelbox NDJSON")
    convert.add_argument("file", nargs="?", help="input file; stdin when absent or '-'")
    commands.add_parser("run", help="run the streaming worker (settings from the environment)")
    commands.add_parser("demo", help="run everything locally with a demo producer (make run)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "convert":
        from worker import cli_convert

        return cli_convert.run(args.file, sys.stdin.buffer, sys.stdout.buffer, sys.stderr.buffer)
    if args.command == "run":
        from worker import service

        return service.main()
    if args.command == "demo":
        from worker import demo

        return demo.main()
    return 2  # pragma: no cover - argparse enforces a known command


if __name__ == "__main__":
    sys.exit(main())
