"""``python -m worker COMMAND``: the worker's commands.

- ``run``         the streaming worker (settings from the environment)
- ``convert``     messages (JSON lines) -> Labelbox NDJSON, without Kafka
- ``replay-dlq``  re-publish dead-lettered records to the main topic
- ``check``       validate messages against a model run's ontology, without uploading
- ``ontology``    print a model run's ontology features (names to use in messages)
- ``send-ground-truth``  register ground-truth labels with a model run
- ``demo``        everything locally with a demo producer (``make run``)
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable


def _convert(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m worker convert", description="messages -> NDJSON")
    parser.add_argument(
        "file", nargs="?", help="input file (one JSON message per line); stdin when absent or '-'"
    )
    args = parser.parse_args(argv)
    from worker import cli_convert

    return cli_convert.run(args.file, sys.stdin.buffer, sys.stdout.buffer, sys.stderr.buffer)


def _run(argv: list[str]) -> int:
    argparse.ArgumentParser(
        prog="python -m worker run", description="settings come from the environment"
    ).parse_args(argv)
    from worker import service

    return service.main()


def _replay(argv: list[str]) -> int:
    from worker import replay

    return replay.main(argv)


def _demo(argv: list[str]) -> int:
    argparse.ArgumentParser(prog="python -m worker demo").parse_args(argv)
    from worker import demo

    return demo.main()


def _model_run_command(command: str) -> Callable[[list[str]], int]:
    def run(argv: list[str]) -> int:
        from worker import cli_modelrun

        return cli_modelrun.main(command, argv)

    return run


COMMANDS: dict[str, Callable[[list[str]], int]] = {
    "run": _run,
    "convert": _convert,
    "replay-dlq": _replay,
    "demo": _demo,
    **{name: _model_run_command(name) for name in ("check", "ontology", "send-ground-truth")},
}


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] not in COMMANDS:
        print(__doc__, file=sys.stderr)
        return 2
    return COMMANDS[args[0]](args[1:])


if __name__ == "__main__":
    sys.exit(main())
