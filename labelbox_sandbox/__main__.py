"""`python -m labelbox_sandbox --port 8765 --api-key KEY`: run the sandbox until SIGTERM or SIGINT.

Prints one line, `Labelbox sandbox ready: http://<host>:<port>/graphql`, once it accepts requests. The API
key comes from `--api-key` or the `SANDBOX_API_KEY` environment variable. `--ontology RUN=FILE` loads a
Labelbox `normalized` ontology for a model run (rows that do not fit it come back FAILURE). Rows on data
rows that were not registered in their model run come back FAILURE, as on Labelbox, unless
`--no-require-data-row-membership`. `--rate-limit-per-s N` answers HTTP 429 + `Retry-After` to an API key
asking more than N GraphQL requests a second (a token bucket, `--rate-limit-burst` deep).
`--lean` stores uploaded lines without validating them (no line rules, no ontology: only JSON objects keyed
by a unique uuid), for benchmarks where this server must not be the bottleneck; do not use it to check what
a client sends.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

from labelbox_sandbox.sandbox import Sandbox


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m labelbox_sandbox", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument(
        "--api-key", default=os.environ.get("SANDBOX_API_KEY"), help="default: $SANDBOX_API_KEY"
    )
    parser.add_argument("--processing-delay-s", type=float, default=0.2)
    parser.add_argument("--task-delay-s", type=float, default=None, help="default: --processing-delay-s")
    parser.add_argument("--model-run-id", action="append", dest="model_run_ids", help="repeat; default: any")
    parser.add_argument(
        "--require-data-row-membership",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="FAIL rows on data rows not registered in the model run, as Labelbox does (default: on)",
    )
    parser.add_argument(
        "--rate-limit-per-s",
        type=float,
        default=None,
        metavar="N",
        help="HTTP 429 + Retry-After beyond N GraphQL requests a second per API key (default: no limit)",
    )
    parser.add_argument(
        "--rate-limit-burst",
        type=float,
        default=None,
        metavar="N",
        help="requests the token bucket holds for a burst (default: the rate)",
    )
    parser.add_argument(
        "--ontology",
        action="append",
        default=[],
        metavar="MODEL_RUN_ID=FILE",
        help="load a Labelbox `normalized` ontology JSON file for a model run (repeat)",
    )
    parser.add_argument(
        "--lean",
        action="store_true",
        help="store uploaded lines without validating them (benchmarks only; not with --ontology)",
    )
    args = parser.parse_args(argv)
    if args.lean and args.ontology:
        parser.error("--lean does not check lines against an ontology: drop --ontology or --lean")
    if not args.api_key:
        parser.error("an API key is required: --api-key or SANDBOX_API_KEY")
    if args.rate_limit_per_s is not None and args.rate_limit_per_s <= 0:
        parser.error("--rate-limit-per-s must be positive")
    try:
        args.ontologies = dict(_ontology(item) for item in args.ontology)
    except (ValueError, OSError) as exc:
        parser.error(f"--ontology: {exc}")
    return args


def _ontology(item: str) -> tuple[str, dict[str, Any]]:
    run, sep, path = item.partition("=")
    if not sep or not run or not path:
        raise ValueError(f"expected MODEL_RUN_ID=FILE, got {item!r}")
    normalized = json.loads(Path(path).read_text())
    if not isinstance(normalized, dict):
        raise ValueError(f"{path} does not hold a JSON object")
    return run, normalized


async def serve(args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    sandbox = Sandbox(
        api_key=args.api_key,
        host=args.host,
        port=args.port,
        processing_delay_s=args.processing_delay_s,
        model_run_ids=args.model_run_ids,
        require_data_row_membership=args.require_data_row_membership,
        task_delay_s=args.task_delay_s,
        rate_limit_per_s=args.rate_limit_per_s,
        rate_limit_burst=args.rate_limit_burst,
        lean=args.lean,
    )
    for run, normalized in args.ontologies.items():
        sandbox.state.load_ontology(run, normalized)
    if args.lean:
        # Stored imports pile up objects that every collection walks again: collect less often.
        gc.freeze()
        gc.set_threshold(50_000, 20, 10)
    async with sandbox:
        if args.lean:
            print("Lean mode: uploaded lines are stored without validation (benchmarks only)", flush=True)
        print(f"Labelbox sandbox ready: {sandbox.graphql_url}", flush=True)
        await stop.wait()


def main(argv: list[str] | None = None) -> int:
    asyncio.run(serve(parse_args(argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
