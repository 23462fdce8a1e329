"""``make bench`` (``python -m tests.bench [--quick]``): the performance targets of DESIGN.md, as ratios.

Every figure is measured in this one run, next to its reference, on this machine: absolute numbers
vary with the machine and its neighbours, ratios much less. Tables go to stdout as Markdown (paste
them into the README); progress goes to stderr. Every process started here is stopped on exit.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import os
import platform
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

from devtools.embedded import EmbeddedBroker
from tests.apache_kafka import KAFKA_VERSION, ApacheKafka
from tests.bench.adaptive import CROWDED, AdaptivePlan, report, run_adaptive
from tests.bench.conversion import run_conversion
from tests.bench.corpus import Corpus, build, build_mask_heavy, mask_kinds
from tests.bench.end_to_end import POLL_INTERVAL_S, EndToEndResult, Setup, run_end_to_end, settings_used
from tests.bench.memory import DELAY_S, MemoryCase, run_memory
from tests.bench.report import Figure, count, mib, section
from tests.bench.results import (
    conversion_figures,
    conversion_table,
    corpora_table,
    e2e_figures,
    e2e_passed,
    e2e_table,
    memory_figures,
    memory_table,
    summary_table,
)
from tests.bench.services import SandboxProcess

MIB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Plan:
    """Sizes of one benchmark run."""

    conversion_messages: int
    mask_heavy_messages: int
    conversion_rounds: int
    e2e_messages: int
    baseline_messages: int
    worker_runs: int
    backlogs: tuple[int, int]
    buffer_bytes: int
    window_s: float
    #: The mask-heavy corpus's conversion rounds: its SDK path takes about 9 s a round here.
    mask_heavy_rounds: int = 2

    def memory_cases(self) -> list[MemoryCase]:
        """Idle, small and 3x backlog at the buffer, then the large backlog with twice the buffer."""
        small, large = self.backlogs
        cases = [(0, self.buffer_bytes), (small, self.buffer_bytes), (large, self.buffer_bytes)]
        return [MemoryCase(b, size) for b, size in [*cases, (large, 2 * self.buffer_bytes)]]


FULL = Plan(2000, 240, 3, 6000, 300, 2, (20_000, 60_000), 8 * MIB, 30.0)
QUICK = Plan(300, 40, 2, 600, 60, 1, (2_000, 6_000), 4 * MIB, 5.0)


def progress(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes, to check that the bench runs")
    parser.add_argument(
        "--no-apache-kafka",
        action="store_true",
        help="skip the end-to-end phase on Apache Kafka (it needs Java 17+, and Maven the first time)",
    )
    parser.add_argument(
        "--no-adaptive",
        action="store_true",
        help="skip adaptive vs fixed upload concurrency (alone: python -m tests.bench.adaptive)",
    )
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    started = time.monotonic()
    print_header()
    figures = conversion_phase(plan)
    log_dir = Path(tempfile.mkdtemp(prefix="lbworker-bench-"))
    try:
        figures += asyncio.run(service_phases(plan, log_dir))
        if not args.no_adaptive:
            adaptive_phase(log_dir, quick=args.quick)
        if not args.no_apache_kafka:
            asyncio.run(apache_kafka_phase(plan, log_dir))
    except BaseException:
        progress(f"failed; the broker, sandbox and worker logs are kept in {log_dir}")
        raise
    shutil.rmtree(log_dir, ignore_errors=True)
    section("Summary")
    print(summary_table(figures))
    print(f"\nWall time of the whole benchmark: {time.monotonic() - started:.0f} s.")
    return 0


def print_header() -> None:
    versions = ", ".join(
        f"{name} {importlib.metadata.version(name)}"
        for name in ("labelbox", "pydantic", "orjson", "aiokafka")
    )
    print("# Benchmarks (`make bench`)\n")
    print(
        f"{os.cpu_count()} CPUs, {platform.python_implementation()} {platform.python_version()}, {versions}."
    )
    print("Every figure comes from this one run; compare the ratios, not the absolute numbers.")


def conversion_phase(plan: Plan) -> list[Figure]:
    corpus = build(plan.conversion_messages, runs=3, masks=True)
    masked = sum(any(p["type"] == "mask" for p in m["predictions"]) for m in corpus.dicts)
    progress(f"conversion: {count(corpus.predictions)} predictions, {plan.conversion_rounds} rounds")
    result = run_conversion(corpus, plan.conversion_rounds)
    heavy = build_mask_heavy(plan.mask_heavy_messages, runs=3)
    progress(
        f"conversion, mask-heavy: {count(heavy.predictions)} predictions, {plan.mask_heavy_rounds} rounds"
    )
    heavy_result = run_conversion(heavy, plan.mask_heavy_rounds)
    kinds = mask_kinds(heavy)
    section("1. Conversion: record bytes -> NDJSON bytes, validation included (one core, one process)")
    print(
        f"Mixed corpus: {count(len(corpus.values))} messages, {count(corpus.predictions)} predictions, "
        f"{mib(corpus.size)}; {masked} messages carry a 64x64 mask (PNG or RLE). "
        f"Mask-heavy corpus (issue 15): {count(len(heavy.values))} messages, "
        f"{count(heavy.predictions)} predictions, {mib(heavy.size)}; {_describe_masks(kinds)} "
        f"({count(sum(kinds.values()))} masks, {_mask_share(heavy)} of the objects). "
        f"Best of {plan.conversion_rounds} interleaved rounds after a warm-up ({plan.mask_heavy_rounds} for "
        "the mask-heavy corpus); the SDK path was checked to "
        "give the same predictions on a sample of each (masks by pixels).\n"
    )
    print(corpora_table([("mixed", result), ("mask-heavy", heavy_result)]))
    print("\nMixed corpus:\n")
    print(conversion_table(result))
    print("\nMask-heavy corpus:\n")
    print(conversion_table(heavy_result))
    return conversion_figures(result) + conversion_figures(heavy_result, "mask-heavy")


def _mask_share(corpus: Corpus) -> str:
    kinds = [p["type"] for m in corpus.dicts for p in m["predictions"]]
    objects = sum(kind in {"bbox", "point", "polyline", "polygon", "mask"} for kind in kinds)
    return f"{kinds.count('mask') / objects:.1%}"


def _describe_masks(kinds: dict[str, int]) -> str:
    return ", ".join(
        f"{kinds[kind]} {kind}" for kind in ("png", "rle-string", "rle-list", "url") if kind in kinds
    )


async def service_phases(plan: Plan, log_dir: Path) -> list[Figure]:
    """Start the broker and the (lean) sandbox once; run the end-to-end and the memory phases on them."""
    with (
        EmbeddedBroker(log_path=str(log_dir / "broker.log")) as broker,
        SandboxProcess(log_dir / "sandbox.log", lean=True) as sandbox,
    ):
        setup = Setup(broker.bootstrap, sandbox, log_dir)
        figures = await e2e_phase(plan, setup, e2e_corpus(plan))
        figures += await mask_heavy_e2e_phase(plan, setup)
        return figures + await memory_phase(plan, setup)


async def mask_heavy_e2e_phase(plan: Plan, setup: Setup) -> list[Figure]:
    """The end-to-end phase on the mask-heavy corpus (issue 15): a tenth of the messages (the SDK path
    converts about 50 of them a second), one worker run; its after-join ratio joins the summary."""
    heavy = replace(plan, e2e_messages=plan.e2e_messages // 10, baseline_messages=plan.baseline_messages // 5)
    corpus = build_mask_heavy(heavy.e2e_messages, runs=3)
    title = "2c. End to end, mask-heavy corpus: local broker -> worker -> local Labelbox in lean mode"
    figures = await e2e_phase(replace(heavy, worker_runs=1), setup, corpus, title, tansu=True)
    return [
        replace(f, name=f"{f.name} (mask-heavy)")
        for f in figures
        if f.name.endswith("SDK consumer, after join")
    ]


async def apache_kafka_phase(plan: Plan, log_dir: Path) -> None:
    """The end-to-end phase again, on Apache Kafka (tests/apache_kafka.py). Reported, not in the summary:
    the targets are judged on the embedded broker."""
    with (
        ApacheKafka(log_path=log_dir / "apache-kafka.log") as kafka,
        SandboxProcess(log_dir / "sandbox-apache-kafka.log", lean=True) as sandbox,
    ):
        title = (
            f"2b. End to end on Apache Kafka {KAFKA_VERSION} (single node, KRaft), same corpus and settings"
        )
        setup = Setup(kafka.bootstrap, sandbox, log_dir)
        figures = await e2e_phase(plan, setup, e2e_corpus(plan), title)
    print("\nThe same ratios on Apache Kafka (the targets are judged on the embedded broker):\n")
    print(summary_table(figures))


def e2e_corpus(plan: Plan) -> Corpus:
    """The end-to-end phase's corpus: 3 model runs, no masks."""
    return build(plan.e2e_messages, runs=3, masks=False, seed=11)


async def e2e_phase(
    plan: Plan, setup: Setup, corpus: Corpus, title: str | None = None, *, tansu: bool | None = None
) -> list[Figure]:
    """The worker, the SDK consumer (on the corpus's head) and the bare read, on any corpus."""
    subset = corpus.head(plan.baseline_messages)
    messages, baseline = count(len(corpus.values)), count(len(subset.values))
    progress(f"end to end: {messages} messages, worker x{plan.worker_runs}, SDK consumer on {baseline}")
    result = await run_end_to_end(setup, corpus, subset, plan.worker_runs)
    section(
        title
        or "2. End to end: local broker -> worker -> local Labelbox in lean mode (own process), committed"
    )
    on_tansu = title is None if tansu is None else tansu
    print(e2e_description(result, plan, setup.sandbox.lean, tansu=on_tansu) + "\n")
    print(e2e_table(result))
    if not e2e_passed(result):
        raise SystemExit("end to end: the sandbox does not hold every prediction, or the worker failed")
    return e2e_figures(result)


def adaptive_phase(log_dir: Path, quick: bool) -> None:
    """Adaptive upload concurrency against the fixed setting (tests/bench/adaptive.py): reported, not in
    the summary (its claims are not ratios against a reference)."""
    plan = AdaptivePlan(messages=300) if quick else AdaptivePlan()
    progress(f"adaptive concurrency: {plan.replicas} replicas, {plan.messages} messages per round")
    report(
        plan, asyncio.run(run_adaptive(plan, log_dir)), "4. Adaptive upload concurrency under a rate limit"
    )
    crowded = replace(CROWDED, messages=300) if quick else CROWDED
    progress(f"adaptive concurrency, crowded: UPLOAD_CONCURRENCY={crowded.upload_concurrency}")
    report(
        crowded,
        asyncio.run(run_adaptive(crowded, log_dir)),
        "4b. Adaptive upload concurrency, a fleet asking twice what the limit gives",
    )


def e2e_description(result: EndToEndResult, plan: Plan, lean: bool, tansu: bool = True) -> str:
    join = (
        "Tansu holds a new group's first join for about half the session timeout (10 s for both group "
        "consumers): hence the 'join' column and the rates after it."
        if tansu
        else "Apache Kafka answers a new group's first join at once (group.initial.rebalance.delay.ms=0)."
    )
    runs = len({message["model_run_id"] for message in result.corpus.dicts})
    masked = sum(any(p["type"] == "mask" for p in m["predictions"]) for m in result.corpus.dicts)
    masks = f"{masked} messages carry a mask" if masked else "no masks"
    server = "lean mode (--lean: lines stored by uuid, not validated)" if lean else "full mode"
    return (
        f"{runs} model runs on a 3-partition topic, {masks}. Both the worker and the SDK consumer import "
        f"into the same local Labelbox-compatible server, in {server}, processing delay 0. Worker "
        f"settings: {settings_used()}; the SDK's wait_till_done polls every "
        f"{POLL_INTERVAL_S} s too. Worker: best of {plan.worker_runs} runs, each on a fresh group, "
        "timed from spawn until every partition is committed. The SDK baseline runs on the first "
        f"{count(len(result.subset.values))} messages (own topic). {join}"
    )


async def memory_phase(plan: Plan, setup: Setup) -> list[Figure]:
    progress(f"memory: backlogs {plan.backlogs}, {plan.window_s:.0f} s after join each")
    pool = build(plan.e2e_messages, runs=3, masks=False, seed=13)
    runs = await run_memory(setup, pool, plan.memory_cases(), plan.window_s)
    section("3. Peak RSS while Labelbox is slow (every request delayed)")
    print(memory_description(plan) + "\n")
    print(memory_table(runs))
    return memory_figures(runs)


def memory_description(plan: Plan) -> str:
    return (
        f"The sandbox delays every request by {DELAY_S:.0f} s. Each worker reads its backlog from a "
        f"fresh group; VmRSS sampled every 50 ms from spawn until {plan.window_s:.0f} s after it joined "
        "(5 s for the idle one). "
        "'peak buffered' is the worker's own lbworker_buffered_bytes gauge (the record bytes it "
        "accounts for against BUFFER_MAX_BYTES)."
    )


if __name__ == "__main__":
    sys.exit(main())
