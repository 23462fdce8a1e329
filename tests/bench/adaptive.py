"""Adaptive upload concurrency (``ADAPTIVE_CONCURRENCY``) against the fixed one, with and without a limit.

A fleet of ``replicas`` workers (one consumer group, one API key) imports into the local Labelbox-compatible
server, which runs its own broker-independent rate limit: a token bucket of ``rate_per_s`` GraphQL
requests a second per API key (``--rate-limit-per-s``, set here through ``PUT /_sandbox/rate-limit``),
answering 429 + Retry-After beyond it. Imports take ``processing_delay_s`` to finish on the server, so
each one costs a create, a few polls and a status-file read, and the fleet's ``replicas x
UPLOAD_CONCURRENCY`` imports in flight ask for more than the bucket gives.

For each mode (``ADAPTIVE_CONCURRENCY=false`` and ``true``; which goes first alternates over repeats)
the fleet starts on a fresh group and an empty topic; once every replica is ready, two rounds of
``messages`` fresh messages are produced and timed from the first send until every partition is
committed: first with no limit, then under the limit (the adaptive limit starts each mode at its
maximum, as a fresh worker does). Measured per round:

- throughput: predictions imported per second (the sandbox must then hold every one of them);
- the share of 429 answers: the server's own count (refused / (admitted + refused) requests of the
  bucket); without a limit, the workers' ``lbworker_upload_retries_total{cause="429"}`` (zero);
- the fleet's upload concurrency limit (the sum of ``lbworker_upload_concurrency_limit`` over the
  replicas), sampled every ``SAMPLE_EVERY_S``: its time average and minimum.

``python -m tests.bench.adaptive [--repeats N] [--trace]`` runs this phase alone (its own broker and server;
``--trace``: a line a second per round).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from devtools.embedded import EmbeddedBroker, free_port
from tests.bench.broker import PARTITIONS, CommitWatcher, make_topic, produce
from tests.bench.corpus import Corpus, build, replicate
from tests.bench.report import count, section, table
from tests.bench.services import API_KEY, SandboxProcess, WorkerProcess, worker_env
from tests.support.processes import http_text

SAMPLE_EVERY_S = 0.2
READY_TIMEOUT_S = 60.0
ROUND_TIMEOUT_S = 90.0
#: The fleet is taken as settled in its group once every replica has been ready this long.
READY_STABLE_S = 1.0
#: With ``--trace``, each round prints one line a second: seconds since the first send, the fleet's
#: limit and imports in flight (sums over the replicas, sampled then), and, over that second, the
#: requests the bucket admitted and refused (429) and the imports that ended.
TRACE_EVERY_S = 1.0
TRACE_HEADER = f"{'t':>5} {'limit':>5} {'flight':>6} {'admit':>5} {'429':>4} {'done':>4}"


@dataclass(frozen=True, slots=True)
class AdaptivePlan:
    """The parameters of the phase (printed with its table, and in the README)."""

    replicas: int = 3
    upload_concurrency: int = 4
    rate_per_s: float = 20.0
    burst: float = 20.0
    batch_max_rows: int = 250
    messages: int = 1200
    processing_delay_s: float = 1.0
    poll_interval_s: float = 0.5
    linger_s: float = 0.5
    session_timeout_ms: int = 6000
    #: A round with no limit before the limited one (the crowded plan skips it: only the limit is at issue).
    free_round: bool = True
    repeats: int = 1
    trace: bool = False

    def describe(self) -> str:
        return (
            f"{self.replicas} replicas in one group (one API key), "
            f"UPLOAD_CONCURRENCY={self.upload_concurrency} each; BATCH_MAX_ROWS={self.batch_max_rows}, "
            f"LABELBOX_POLL_INTERVAL_S={self.poll_interval_s}, BATCH_LINGER_S={self.linger_s}; server: "
            f"imports take {self.processing_delay_s} s; limit: a token bucket of {self.rate_per_s:g} "
            f"GraphQL requests/s per key, {self.burst:g} deep. "
            f"{count(self.messages)} fresh messages (3 model runs, {PARTITIONS} partitions) per round"
            + ("." if self.free_round else ", under the limit only.")
        )


DEFAULT = AdaptivePlan()
#: The issue's motivating case, next to :data:`DEFAULT`: the fleet's maximum concurrency (24 imports in
#: flight) asks for about twice what the bucket sustains (about 11 imports in flight at 20 requests/s when
#: each costs a create and 2-3 polls over its 1 s), so the fixed setting keeps hitting 429.
CROWDED = AdaptivePlan(upload_concurrency=8, free_round=False)


@dataclass(slots=True)
class Round:
    """One timed round of one mode."""

    adaptive: bool
    limited: bool
    messages: int
    predictions: int
    seconds: float
    stored: int
    requests: float
    refused: float
    #: Imports the fleet ended in the round (``lbworker_imports_total``, bisection halves included).
    imports: float = 0.0
    #: Polls (``poll_import`` requests) the fleet made and those it retried after a 429.
    polls: float = 0.0
    polls_refused: float = 0.0
    #: The bucket's rate (requests/s) during the round; None without a limit.
    rate_per_s: float | None = None
    limits: list[float] = field(default_factory=list)
    #: With ``--trace``: one line a second (see :data:`TRACE_HEADER`).
    trace: list[str] = field(default_factory=list)

    @property
    def throughput(self) -> float:
        return self.predictions / self.seconds

    @property
    def refused_share(self) -> float:
        return self.refused / self.requests if self.requests else 0.0

    @property
    def admitted(self) -> float:
        return self.requests - self.refused

    @property
    def admitted_per_import(self) -> float:
        return self.admitted / self.imports if self.imports else float("nan")

    @property
    def admitted_per_1000_lines(self) -> float:
        return 1000 * self.admitted / self.predictions

    @property
    def polls_per_import(self) -> float:
        """Polls answered (not refused with a 429) per import."""
        return (self.polls - self.polls_refused) / self.imports if self.imports else float("nan")

    @property
    def utilisation(self) -> float:
        """Admitted requests a second over the bucket's rate (nan without a limit)."""
        return self.admitted / self.seconds / self.rate_per_s if self.rate_per_s else float("nan")

    @property
    def mean_limit(self) -> float:
        return sum(self.limits) / len(self.limits) if self.limits else float("nan")


class _Sandbox(SandboxProcess):
    """The benchmark's sandbox, with imports that take ``processing_delay_s`` to finish."""

    def __init__(self, log_path: Path, processing_delay_s: float) -> None:
        super().__init__(log_path, processing_delay_s=processing_delay_s)

    def rate_limit(self) -> dict[str, float] | None:
        answer: dict[str, float] | None = self.admin("GET", "rate-limit")
        return answer

    def set_rate_limit(self, per_s: float | None, burst: float | None = None) -> None:
        self.admin("PUT", "rate-limit", {"per_s": per_s, "burst": burst})


async def run_adaptive(plan: AdaptivePlan, log_dir: Path) -> list[Round]:
    """Both modes, ``plan.repeats`` times (interleaved, which goes first alternating), on a broker and a
    server of their own."""
    with (
        EmbeddedBroker(log_path=str(log_dir / "adaptive-broker.log")) as broker,
        _Sandbox(log_dir / "adaptive-sandbox.log", plan.processing_delay_s) as sandbox,
    ):
        pool = build(600, runs=3, masks=False, seed=17)
        rounds: list[Round] = []
        for attempt in range(plan.repeats):
            for adaptive in (False, True) if attempt % 2 == 0 else (True, False):  # no order bias
                rounds += await _run_mode(plan, broker.bootstrap, sandbox, pool, adaptive, attempt, log_dir)
        return rounds


async def _run_mode(
    plan: AdaptivePlan,
    bootstrap: str,
    sandbox: _Sandbox,
    pool: Corpus,
    adaptive: bool,
    attempt: int,
    log_dir: Path,
) -> list[Round]:
    tag = f"ac{attempt}{'a' if adaptive else 'f'}{uuid.uuid4().hex[:4]}"
    topic, group = f"bench-{tag}", f"bench-{tag}"
    await make_topic(bootstrap, topic)
    names = ("free", "limited") if plan.free_round else ("limited",)
    corpora = [replicate(pool, plan.messages, f"{tag}-{name}") for name in names]
    for corpus in corpora:
        sandbox.register(corpus.dicts)
    sandbox.set_rate_limit(None)
    ends = dict.fromkeys(range(PARTITIONS), 0)
    rounds = []
    with contextlib.ExitStack() as stack:
        workers = [
            stack.enter_context(
                WorkerProcess(
                    _env(plan, bootstrap, sandbox, topic, group, adaptive), log_dir / f"{tag}-{i}.log"
                )
            )
            for i in range(plan.replicas)
        ]
        await _until_ready(workers)
        async with CommitWatcher(bootstrap, group) as watcher:
            limits = (False, True) if plan.free_round else (True,)
            for limited, corpus in zip(limits, corpora[-len(limits) :], strict=True):
                if limited:
                    sandbox.set_rate_limit(plan.rate_per_s, plan.burst)
                rounds.append(
                    await _round(
                        sandbox,
                        workers,
                        watcher,
                        bootstrap,
                        topic,
                        corpus,
                        ends,
                        adaptive,
                        limited,
                        trace=plan.trace,
                    )
                )
        sandbox.set_rate_limit(None)
    return rounds


def _env(
    plan: AdaptivePlan, bootstrap: str, sandbox: _Sandbox, topic: str, group: str, adaptive: bool
) -> dict[str, str]:
    return worker_env(
        kafka_bootstrap_servers=bootstrap,
        kafka_topic=topic,
        kafka_group_id=group,
        kafka_dlq_topic=f"{topic}.dlq",
        kafka_session_timeout_ms=plan.session_timeout_ms,
        labelbox_api_key=API_KEY,
        labelbox_graphql_url=sandbox.graphql_url,
        labelbox_poll_interval_s=plan.poll_interval_s,
        batch_linger_s=plan.linger_s,
        batch_max_rows=plan.batch_max_rows,
        upload_concurrency=plan.upload_concurrency,
        adaptive_concurrency=str(adaptive).lower(),
        metrics_port=free_port(),
        shutdown_timeout_s=5,
        log_level="WARNING",
    )


async def _until_ready(workers: list[WorkerProcess]) -> None:
    """Until every replica has been ready for ``READY_STABLE_S`` (joined, its partitions assigned)."""
    started, stable_since = time.monotonic(), None
    while True:
        for worker in workers:
            worker.check_alive()
        if all(worker.ready() for worker in workers):
            stable_since = stable_since or time.monotonic()
            if time.monotonic() - stable_since >= READY_STABLE_S:
                return
        else:
            stable_since = None
        if time.monotonic() - started > READY_TIMEOUT_S:
            raise TimeoutError(f"the replicas were not all ready within {READY_TIMEOUT_S} s")
        await asyncio.sleep(0.1)


def _fleet(workers: list[WorkerProcess], name: str) -> float:
    return sum(worker.metrics().get(name, 0.0) for worker in workers)


def _fleet_polls(workers: list[WorkerProcess]) -> tuple[float, float]:
    """The fleet's ``poll_import`` requests, and those of them retried after a 429 (summed samples of
    ``lbworker_upload_attempts_total`` and ``lbworker_upload_retries_total`` with those labels)."""
    polls = refused = 0.0
    for worker in workers:
        answer = http_text(f"{worker.ops_url}/metrics", timeout_s=2.0)
        for line in answer[1].splitlines() if answer is not None and answer[0] == 200 else []:
            name, _, value = line.rpartition(" ")
            if name.startswith("lbworker_upload_attempts_total{") and 'operation="poll_import"' in name:
                polls += float(value)
            elif (
                name.startswith("lbworker_upload_retries_total{")
                and 'operation="poll_import"' in name
                and 'cause="429"' in name
            ):
                refused += float(value)
    return polls, refused


async def _round(
    sandbox: _Sandbox,
    workers: list[WorkerProcess],
    watcher: CommitWatcher,
    bootstrap: str,
    topic: str,
    corpus: Corpus,
    ends: dict[int, int],
    adaptive: bool,
    limited: bool,
    trace: bool = False,
) -> Round:
    stored_before = sandbox.stored_rows()
    bucket_before = sandbox.rate_limit() or {}
    attempts_before = _fleet(workers, "lbworker_upload_attempts_total")
    imports_before = _fleet(workers, "lbworker_imports_total")
    polls_before = _fleet_polls(workers)
    started = time.perf_counter()
    for partition, added in (await produce(bootstrap, topic, corpus)).items():
        ends[partition] += added
    limits: list[float] = []
    lines: list[str] = []
    tracer = _Tracer(sandbox, workers, started) if trace else None
    next_sample = started
    while not await watcher.done(topic, ends):
        for worker in workers:
            worker.check_alive()
        if time.perf_counter() >= next_sample:
            limits.append(_fleet(workers, "lbworker_upload_concurrency_limit"))
            next_sample += SAMPLE_EVERY_S
        if tracer is not None:
            lines += tracer.sample()
        if time.perf_counter() - started > ROUND_TIMEOUT_S:
            raise TimeoutError(f"the fleet did not commit a round in {ROUND_TIMEOUT_S} s")
        await asyncio.sleep(0.05)
    seconds = time.perf_counter() - started
    imports = _fleet(workers, "lbworker_imports_total") - imports_before
    polls_after = _fleet_polls(workers)
    bucket = sandbox.rate_limit()
    if bucket is not None:
        refused = bucket["refused"] - bucket_before.get("refused", 0)
        requests = bucket["admitted"] - bucket_before.get("admitted", 0) + refused
    else:
        refused = 0.0  # no bucket, no 429
        requests = _fleet(workers, "lbworker_upload_attempts_total") - attempts_before
    return Round(
        adaptive=adaptive,
        limited=limited,
        messages=len(corpus.values),
        predictions=corpus.predictions,
        seconds=seconds,
        stored=sandbox.stored_rows() - stored_before,
        requests=requests,
        refused=refused,
        imports=imports,
        polls=polls_after[0] - polls_before[0],
        polls_refused=polls_after[1] - polls_before[1],
        rate_per_s=bucket["per_s"] if bucket is not None else None,
        limits=limits,
        trace=lines,
    )


class _Tracer:
    """``--trace``: a line every :data:`TRACE_EVERY_S` of a round (see :data:`TRACE_HEADER`)."""

    def __init__(self, sandbox: _Sandbox, workers: list[WorkerProcess], started: float) -> None:
        self._sandbox, self._workers, self._started = sandbox, workers, started
        self._next = started + TRACE_EVERY_S
        self._last = self._counts()

    def _counts(self) -> tuple[float, float, float]:
        bucket = self._sandbox.rate_limit() or {}
        done = _fleet(self._workers, "lbworker_imports_total")
        return bucket.get("admitted", 0.0), bucket.get("refused", 0.0), done

    def sample(self) -> list[str]:
        now = time.perf_counter()
        if now < self._next:
            return []
        self._next += TRACE_EVERY_S
        counts = self._counts()
        admitted, refused, done = (new - old for new, old in zip(counts, self._last, strict=True))
        self._last = counts
        limit = _fleet(self._workers, "lbworker_upload_concurrency_limit")
        flight = _fleet(self._workers, "lbworker_imports_in_flight")
        at = now - self._started
        return [f"{at:5.1f} {limit:5.0f} {flight:6.0f} {admitted:5.0f} {refused:4.0f} {done:4.0f}"]


def rounds_table(rounds: list[Round]) -> str:
    rows = [
        [
            "limit" if r.limited else "no limit",
            "adaptive" if r.adaptive else "fixed",
            f"{r.seconds:.1f} s",
            f"{r.throughput:,.0f}/s",
            f"{r.refused_share:.1%}",
            f"{count(r.refused)} / {count(r.requests)}",
            f"{r.mean_limit:.1f} (min {min(r.limits, default=0):.0f})",
            "yes" if r.stored == r.predictions else f"NO ({r.stored} of {r.predictions})",
        ]
        for r in sorted(rounds, key=lambda r: (r.limited, r.adaptive))
    ]
    headers = [
        "server",
        "concurrency",
        "round",
        "predictions/s",
        "429 share",
        "429 / requests",
        "fleet limit",
        "all stored",
    ]
    return table(headers, rows, left=(0, 1))


def decomposition(rounds: list[Round]) -> str:
    """Why throughput is what it is under a request-rate limit: predictions/s = utilisation x rate x
    predictions per admitted request. Per mode and round (medians over the repeats, then the range)."""
    rows = []
    for limited in (False, True):
        for adaptive in (False, True):
            mine = [r for r in rounds if r.limited == limited and r.adaptive == adaptive]
            if not mine:
                continue
            rows.append(
                [
                    "limit" if limited else "no limit",
                    "adaptive" if adaptive else "fixed",
                    _spread([r.imports for r in mine], "{:.0f}"),
                    _spread([r.admitted for r in mine], "{:.0f}"),
                    _spread([r.admitted_per_import for r in mine], "{:.2f}"),
                    _spread([r.polls_per_import for r in mine], "{:.2f}"),
                    _spread([r.admitted_per_1000_lines for r in mine], "{:.1f}"),
                    _spread([r.utilisation for r in mine], "{:.0%}") if limited else "-",
                    _spread([r.mean_limit for r in mine], "{:.1f}"),
                ]
            )
    headers = [
        "server",
        "concurrency",
        "imports",
        "admitted requests",
        "admitted / import",
        "polls answered / import",
        "admitted / 1,000 lines",
        "bucket utilisation",
        "fleet limit",
    ]
    note = (
        "Each cell: the median over the repeats (the range). Under the limit, requests are the bucket's "
        "GraphQL requests; without one, the workers' lbworker_upload_attempts_total (every operation, "
        "status files too)."
    )
    return table(headers, rows, left=(0, 1)) + "\n\n" + note


def _spread(values: list[float], form: str) -> str:
    """The median, then the range: ``median (low-high)``."""
    ordered = sorted(values)
    middle = len(ordered) // 2
    median = ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2
    if len(ordered) == 1:
        return form.format(median)
    return f"{form.format(median)} ({form.format(ordered[0])}-{form.format(ordered[-1])})"


def comparison(rounds: list[Round]) -> str:
    """Adaptive against fixed, per repeat: the throughput ratio and both 429 shares, limit or not."""
    lines = []
    for limited in (False, True):
        fixed = [r for r in rounds if r.limited == limited and not r.adaptive]
        adaptive = [r for r in rounds if r.limited == limited and r.adaptive]
        if not fixed:
            continue
        ratios = ", ".join(
            f"{a.throughput / f.throughput:.2f}x" for f, a in zip(fixed, adaptive, strict=True)
        )
        shares = ", ".join(
            f"{a.refused_share:.0%} vs {f.refused_share:.0%}" for f, a in zip(fixed, adaptive, strict=True)
        )
        where = "Under the limit" if limited else "Without a limit"
        pairs = zip(fixed, adaptive, strict=True)
        median = _spread([a.throughput / f.throughput for f, a in pairs], "{:.2f}x")
        lines.append(
            f"{where}: adaptive / fixed throughput {ratios} (median {median}); "
            f"429 share adaptive vs fixed {shares}."
        )
    return "\n".join(lines)


def report(plan: AdaptivePlan, rounds: list[Round], title: str = "Adaptive upload concurrency") -> None:
    section(title)
    print(plan.describe() + "\n")
    print(rounds_table(rounds))
    print("\n" + decomposition(rounds))
    print("\n" + comparison(rounds))
    for number, r in enumerate(rounds):
        if r.trace:
            mode = "adaptive" if r.adaptive else "fixed"
            where = "limit" if r.limited else "no limit"
            print(f"\nTrace: round {number + 1}, {mode}, {where}, {r.seconds:.1f} s\n{TRACE_HEADER}")
            print("\n".join(r.trace))
    if any(r.stored != r.predictions for r in rounds):
        raise SystemExit("adaptive concurrency: the sandbox does not hold every prediction")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.adaptive", description=__doc__)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--replicas", type=int, default=DEFAULT.replicas)
    parser.add_argument("--concurrency", type=int, default=DEFAULT.upload_concurrency)
    parser.add_argument("--rate", type=float, default=DEFAULT.rate_per_s)
    parser.add_argument("--burst", type=float, default=DEFAULT.burst)
    parser.add_argument("--batch-rows", type=int, default=DEFAULT.batch_max_rows)
    parser.add_argument("--messages", type=int, default=DEFAULT.messages)
    parser.add_argument("--delay", type=float, default=DEFAULT.processing_delay_s)
    parser.add_argument("--poll", type=float, default=DEFAULT.poll_interval_s)
    parser.add_argument(
        "--no-free-round",
        action="store_true",
        help="only the round under the limit (make bench's crowded plan: --concurrency 8 --no-free-round)",
    )
    parser.add_argument(
        "--trace",
        action="store_true",
        help="print, per round, a line a second: fleet limit, imports in flight, admitted, 429s, done",
    )
    args = parser.parse_args(argv)
    plan = AdaptivePlan(
        replicas=args.replicas,
        upload_concurrency=args.concurrency,
        rate_per_s=args.rate,
        burst=args.burst,
        batch_max_rows=args.batch_rows,
        messages=args.messages,
        processing_delay_s=args.delay,
        poll_interval_s=args.poll,
        free_round=not args.no_free_round,
        repeats=args.repeats,
        trace=args.trace,
    )
    log_dir = Path(tempfile.mkdtemp(prefix="lbworker-bench-adaptive-"))
    started = time.monotonic()
    try:
        rounds = asyncio.run(run_adaptive(plan, log_dir))
    except BaseException:
        print(f"failed; logs kept in {log_dir}", file=sys.stderr)
        raise
    shutil.rmtree(log_dir, ignore_errors=True)
    report(plan, rounds)
    print(f"\nWall time: {time.monotonic() - started:.0f} s.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
