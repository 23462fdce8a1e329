"""The tables of each phase and the summary figures, from the phases' results."""

from __future__ import annotations

from tests.bench.conversion import ConversionResult
from tests.bench.corpus import Corpus
from tests.bench.end_to_end import EndToEndResult
from tests.bench.memory import MemoryRun
from tests.bench.report import Figure, Target, count, mib, per_s, ratio, seconds, table
from tests.bench.sdk_consumer import Timed
from tests.bench.timing import rate

CONVERSION_VS_SDK = Target(10)
CONVERSION_VS_LIMIT = Target(0.5)
E2E_VS_SDK = Target(20)
E2E_VS_LIMIT = Target(0.5)
#: "Independent of backlog": 3x the backlog may cost at most 20% more peak RSS (the bench's threshold).
RSS_GROWTH = Target(1.2, at_most=True)
#: "Bounded by the configured buffer": RSS above the idle worker at most 2x BUFFER_MAX_BYTES (ditto).
RSS_PER_BUFFER = Target(2, at_most=True)


# --- conversion ----------------------------------------------------------------------------------


def conversion_table(result: ConversionResult) -> str:
    paths = [
        ("ours: decode (validation) + convert + line bytes", result.ours_s),
        ("Labelbox SDK: json.loads + labelbox.types + NDJsonConverter.serialize + json.dumps", result.sdk_s),
        ("limit: orjson.loads + orjson.dumps of our lines", result.limit_s),
    ]
    rows = [[name, *_conversion_cells(result, s)] for name, s in paths]
    split = (
        f"Ours, stage by stage: decode + validate {seconds(result.decode_s)} "
        f"({result.decode_s / result.ours_s:.0%}), convert + line bytes {seconds(result.convert_s)} "
        f"({result.convert_s / result.ours_s:.0%})."
    )
    headers = ["path", "messages", "predictions", "best round", "ours ÷ this"]
    return table(headers, rows) + "\n\n" + split


def _conversion_cells(result: ConversionResult, s: float) -> list[str]:
    messages, predictions = rate(result.messages, s), rate(result.predictions, s)
    return [per_s(messages), per_s(predictions), seconds(s), ratio(s / result.ours_s)]


def corpora_table(results: list[tuple[str, ConversionResult]]) -> str:
    """One row per corpus: ours, the SDK path and the orjson floor in predictions/s, and the ratios."""
    rows = []
    for name, result in results:
        ours = rate(result.predictions, result.ours_s)
        sdk, limit = rate(result.predictions, result.sdk_s), rate(result.predictions, result.limit_s)
        rows.append(
            [
                name,
                count(result.messages),
                count(result.predictions),
                per_s(ours),
                per_s(sdk),
                per_s(limit),
                ratio(ours / sdk),
                ratio(ours / limit),
            ]
        )
    headers = ["corpus", "messages", "predictions", "ours (pred/s)", "SDK path", "orjson floor"]
    return table([*headers, "ours ÷ SDK", "ours ÷ orjson"], rows)


def conversion_figures(result: ConversionResult, corpus: str = "") -> list[Figure]:
    """Ours against the SDK path and against the orjson floor; on the mask-heavy corpus (``corpus``
    given) against the SDK only: orjson copies a mask's base64 where we decode, check and re-encode it,
    so that ratio (in the corpora table) is no target."""
    ours = rate(result.predictions, result.ours_s)
    sdk, limit = rate(result.predictions, result.sdk_s), rate(result.predictions, result.limit_s)
    suffix = f" ({corpus})" if corpus else ""
    figures = [
        Figure(
            f"conversion vs Labelbox SDK{suffix}",
            per_s(ours, "pred"),
            per_s(sdk, "pred"),
            ours / sdk,
            CONVERSION_VS_SDK,
        )
    ]
    if not corpus:
        figures.append(
            Figure(
                "conversion vs orjson limit",
                per_s(ours, "pred"),
                per_s(limit, "pred"),
                ours / limit,
                CONVERSION_VS_LIMIT,
            )
        )
    return figures


# --- end to end ----------------------------------------------------------------------------------


def e2e_table(result: EndToEndResult) -> str:
    corpus, subset = result.corpus, result.subset
    rows = [
        _e2e_row("worker (python -m worker run)", corpus, result.worker.timed),
        _e2e_row("baseline: aiokafka + Labelbox SDK per batch (same server)", subset, result.baseline.timed),
        _e2e_row("limit: bare aiokafka read + orjson (no group)", corpus, Timed(result.limit_s, 0.0)),
    ]
    headers = [
        "path",
        "messages",
        "predictions",
        "from start",
        "join",
        "msg/s from start",
        "msg/s after join",
    ]
    return table(headers, rows) + "\n\n" + e2e_notes(result)


def _e2e_row(name: str, corpus: Corpus, timed: Timed) -> list[str]:
    messages = len(corpus.values)
    return [
        name,
        count(messages),
        count(corpus.predictions),
        seconds(timed.total_s),
        seconds(timed.joined_s) if timed.joined_s else "-",
        per_s(rate(messages, timed.total_s)),
        per_s(rate(messages, timed.total_s - timed.joined_s)),
    ]


def e2e_notes(result: EndToEndResult) -> str:
    """What the worker did, what the sandbox holds, and the CPU each side used per message."""
    worker, baseline, expected = result.worker, result.baseline, result.corpus.predictions
    messages, subset = len(result.corpus.values), len(result.subset.values)
    after = worker.timed.total_s - worker.timed.joined_s
    lines = [
        f"worker: {per_s(rate(expected, after), 'predictions')} after join; {worker.imports:.0f} imports, "
        f"{worker.dead_letters:.0f} dead letters, exit status {worker.exit_code}",
        f"sandbox holds {count(worker.stored)} of {count(expected)} predictions after the worker, "
        f"{count(baseline.stored)} of {count(result.subset.predictions)} after the SDK consumer",
        f"CPU per message after join: worker {_ms_each(worker.worker_cpu_s, messages)} "
        f"(event loop {_ms_each(worker.loop_cpu_s, messages)}, converter thread "
        f"{_ms_each(worker.worker_cpu_s - worker.loop_cpu_s, messages)}) "
        f"+ sandbox {_ms_each(worker.sandbox_cpu_s, messages)}; "
        f"SDK consumer {_ms_each(baseline.timed.cpu_after_join_s, subset)} "
        f"+ sandbox {_ms_each(baseline.sandbox_cpu_s, subset)}; "
        f"limit (whole run, wall) {_ms_each(result.limit_s, messages)}",
    ]
    return "\n".join(f"- {line}" for line in lines)


def _ms_each(seconds_: float, items: int) -> str:
    return f"{1000 * seconds_ / items:.2f} ms"


def e2e_figures(result: EndToEndResult) -> list[Figure]:
    worker, baseline = result.worker.timed, result.baseline.timed
    messages, subset = len(result.corpus.values), len(result.subset.values)
    ours_start = rate(messages, worker.total_s)
    ours_joined = rate(messages, worker.total_s - worker.joined_s)
    sdk_start = rate(subset, baseline.total_s)
    sdk_joined = rate(subset, baseline.total_s - baseline.joined_s)
    limit = rate(messages, result.limit_s)
    return [
        _msg_figure("end to end vs SDK consumer, from start", ours_start, sdk_start, E2E_VS_SDK),
        _msg_figure("end to end vs SDK consumer, after join", ours_joined, sdk_joined, E2E_VS_SDK),
        _msg_figure("end to end vs bare read, from start", ours_start, limit, E2E_VS_LIMIT),
        _msg_figure("end to end vs bare read, worker after join", ours_joined, limit, E2E_VS_LIMIT),
    ]


def _msg_figure(name: str, ours: float, reference: float, target: Target) -> Figure:
    return Figure(name, per_s(ours, "msg"), per_s(reference, "msg"), ours / reference, target)


def e2e_passed(result: EndToEndResult) -> bool:
    """Everything was imported exactly as produced and the worker exited cleanly."""
    worker = result.worker
    return (
        worker.stored == result.corpus.predictions
        and result.baseline.stored == result.subset.predictions
        and worker.dead_letters == 0
        and worker.exit_code == 0
    )


# --- memory --------------------------------------------------------------------------------------


def memory_table(runs: list[MemoryRun]) -> str:
    idle = _idle_kib(runs)
    rows = [_memory_row(run, idle) for run in runs]
    headers = ["backlog", "backlog size", "BUFFER_MAX_BYTES", "records fetched", "peak buffered (gauge)"]
    headers += ["peak RSS", "RSS - idle", "(RSS - idle) ÷ buffer"]
    return table(headers, rows, left=())


def _memory_row(run: MemoryRun, idle_kib: int) -> list[str]:
    sample, buffer = run.sample, run.case.buffer_bytes
    over = (sample.peak_rss_kib - idle_kib) * 1024
    growth = ratio(over / buffer) if run.case.backlog else "idle"
    return [
        count(run.case.backlog),
        mib(run.backlog_bytes),
        mib(buffer),
        count(sample.consumed),
        mib(sample.peak_buffered),
        mib(sample.peak_rss_kib * 1024),
        mib(over),
        growth,
    ]


def _idle_kib(runs: list[MemoryRun]) -> int:
    return min(run.sample.peak_rss_kib for run in runs if run.case.backlog == 0)


def memory_figures(runs: list[MemoryRun]) -> list[Figure]:
    """Backlog growth at the same buffer (smallest vs largest backlog), and RSS over idle per buffer."""
    idle = _idle_kib(runs)
    same_buffer = [
        run for run in runs if run.case.backlog and run.case.buffer_bytes == runs[1].case.buffer_bytes
    ]
    small, large = same_buffer[0], same_buffer[-1]
    growth = large.sample.peak_rss_kib / small.sample.peak_rss_kib
    over = (large.sample.peak_rss_kib - idle) * 1024
    return [
        Figure(
            f"peak RSS, backlog {count(large.case.backlog)} vs {count(small.case.backlog)}",
            mib(large.sample.peak_rss_kib * 1024),
            mib(small.sample.peak_rss_kib * 1024),
            growth,
            RSS_GROWTH,
        ),
        Figure(
            "peak RSS over idle vs BUFFER_MAX_BYTES",
            mib(over),
            mib(large.case.buffer_bytes),
            over / large.case.buffer_bytes,
            RSS_PER_BUFFER,
        ),
    ]


def summary_table(figures: list[Figure]) -> str:
    headers = ["figure", "measured", "reference", "ratio", "target", "verdict"]
    return table(headers, [figure.row() for figure in figures], left={0, 5})
