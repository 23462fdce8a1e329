"""``make run``: the whole product on one machine, ending by itself with a summary.

Starts the embedded Kafka-compatible broker, the local Labelbox-compatible server and the worker
(``python -m worker run``, a real subprocess), then a demo producer publishes a few thousand realistic
predictions of every type over several model runs, a few invalid messages among them. Progress is
printed while the worker streams; at the end, a summary, and everything started is stopped.

With KAFKA_BOOTSTRAP_SERVERS and LABELBOX_API_KEY in the environment, it runs the worker against
them instead (the same as ``python -m worker run``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import numpy as np
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError
from aiokafka.structs import RecordMetadata

from devtools.embedded import EmbeddedBroker, create_topics, free_port, spawn_child
from schemas import (
    MAX_MESSAGE_BYTES,
    Answer,
    BBox,
    BBoxPrediction,
    Checklist,
    ChecklistPrediction,
    ConfusionMatrixMetric,
    CustomMetric,
    DataRowRef,
    MaskPrediction,
    Point,
    PointPrediction,
    PolygonPrediction,
    PolylinePrediction,
    Prediction,
    PredictionMessage,
    Radio,
    RadioPrediction,
    ScalarMetric,
    Text,
    TextPrediction,
    mask_from_array,
)
from worker.logs import configure
from worker.settings import OWN_PREFIXES

MODEL_RUNS = ("demo-run-detector-v1", "demo-run-detector-v2", "demo-run-segmenter", "demo-run-classifier")
MESSAGES = 3000
PARTITIONS = 6
TOPIC, DLQ_TOPIC, GROUP = "predictions", "predictions.dlq", "demo-worker"
API_KEY = "demo-api-key"
TIMEOUT_S = 240.0


# --- the demo producer's data --------------------------------------------------------------------


def _vehicle_box(rng: random.Random) -> BBoxPrediction:
    x, y = rng.uniform(0, 1800), rng.uniform(0, 1000)
    colour = Radio(
        type="radio",
        name="colour",
        answer=Answer(name=rng.choice(["red", "blue", "white"]), confidence=round(rng.random(), 3)),
    )
    occluded = Checklist(
        type="checklist",
        name="occlusion",
        answers=[
            Answer(
                name="partly",
                confidence=0.6,
                classifications=[Text(type="text", name="note", answer="behind a tree")],
            )
        ],
    )
    return BBoxPrediction(
        type="bbox",
        name="vehicle",
        confidence=round(rng.random(), 3),
        bbox=BBox.from_corners(x, y, x + rng.uniform(20, 300), y + rng.uniform(20, 200)),
        classifications=[colour, occluded],
        custom_metrics=[CustomMetric(name="box_score", value=round(rng.random(), 3))],
    )


def _shapes(rng: random.Random) -> list[Prediction]:
    cx, cy = rng.uniform(100, 1800), rng.uniform(100, 1000)
    ring = [Point(x=cx + 50 * np.cos(a), y=cy + 50 * np.sin(a)) for a in np.linspace(0, 2 * np.pi, 7)[:-1]]
    return [
        PolygonPrediction(type="polygon", name="road_sign", polygon=ring, confidence=0.7),
        PointPrediction(type="point", name="keypoint", point=Point(x=cx, y=cy)),
        PolylinePrediction(type="polyline", name="lane", line=[Point(x=0, y=cy), Point(x=cx, y=cy + 10)]),
    ]


def _classifications(rng: random.Random) -> list[Prediction]:
    return [
        RadioPrediction(
            type="radio",
            name="weather",
            confidence=0.9,
            answer=Answer(name=rng.choice(["sunny", "rain", "fog"])),
        ),
        ChecklistPrediction(
            type="checklist",
            name="scene",
            answers=[Answer(name="urban", confidence=0.8), Answer(name="night")],
        ),
        TextPrediction(type="text", name="caption", answer="a street with parked cars", confidence=0.5),
    ]


def _mask(rng: random.Random) -> MaskPrediction:
    pixels = np.zeros((48, 64), dtype=np.uint8)
    top, left = rng.randrange(0, 24), rng.randrange(0, 32)
    pixels[top : top + 20, left : left + 24] = 1
    return MaskPrediction(type="mask", name="drivable_area", mask=mask_from_array(pixels), confidence=0.8)


def _metrics(rng: random.Random) -> list[Prediction]:
    return [
        ScalarMetric(type="scalar_metric", metric_name="image_score", value=round(rng.random(), 3)),
        ConfusionMatrixMetric(
            type="confusion_matrix_metric",
            metric_name="vehicle_cm",
            value=(3, 1, 0, 1),
            feature_name="vehicle",
        ),
    ]


def demo_message(index: int, rng: random.Random) -> PredictionMessage:
    """A realistic message: boxes with nested questions, shapes, classifications, sometimes a mask."""
    predictions: list[Prediction] = [_vehicle_box(rng) for _ in range(rng.randint(1, 4))]
    predictions += _shapes(rng) + _classifications(rng)
    if index % 10 == 0:
        predictions.append(_mask(rng))
    if index % 5 == 0:
        predictions += _metrics(rng)
    return PredictionMessage(
        model_run_id=MODEL_RUNS[index % len(MODEL_RUNS)],
        data_row=DataRowRef(global_key=f"street-{index:05d}.jpg"),
        message_id=f"demo-{index}",
        predictions=predictions,
    )


def _feature_id(name: str) -> str:
    """A stable 25-character cuid-like featureSchemaId."""
    return "cl" + hashlib.sha1(name.encode(), usedforsecurity=False).hexdigest()[:23]


def _question(kind: str, name: str, answers: dict[str, list[dict[str, Any]]] | None = None) -> dict[str, Any]:
    options = [
        {"value": value, "label": value, "featureSchemaId": _feature_id(f"{name}.{value}"), "options": nested}
        for value, nested in (answers or {}).items()
    ]
    return {"type": kind, "name": name, "featureSchemaId": _feature_id(name), "options": options}


def demo_ontology() -> dict[str, Any]:
    """The demo model runs' ontology (Labelbox ``normalized`` shape): every feature the producer uses."""
    vehicle_questions = [
        _question("radio", "colour", {"red": [], "blue": [], "white": []}),
        _question("checklist", "occlusion", {"partly": [_question("text", "note")], "fully": []}),
    ]
    tools = [
        ("rectangle", "vehicle", vehicle_questions),
        ("polygon", "road_sign", []),
        ("point", "keypoint", []),
        ("line", "lane", []),
        ("raster-segmentation", "drivable_area", []),
    ]
    return {
        "tools": [
            {"tool": tool, "name": name, "featureSchemaId": _feature_id(name), "classifications": nested}
            for tool, name, nested in tools
        ],
        "classifications": [
            _question("radio", "weather", {"sunny": [], "rain": [], "fog": []}),
            _question("checklist", "scene", {"urban": [], "night": [], "highway": []}),
            _question("text", "caption"),
        ],
    }


INVALID: list[bytes] = [
    b"this is not JSON",
    orjson.dumps({"model_run_id": MODEL_RUNS[0], "data_row": {"global_key": "x.jpg"}, "predictions": []}),
    orjson.dumps(
        {
            "model_run_id": MODEL_RUNS[1],
            "data_row": {"global_key": "y.jpg"},
            "predictions": [{"type": "bbox", "name": "vehicle", "confidence": 1.7, "bbox": {}}],
        }
    ),
    orjson.dumps(
        {
            "model_run_id": MODEL_RUNS[2],
            "data_row": {"global_key": "z.jpg"},
            "predictions": [{"type": "cuboid"}],
        }
    ),
    orjson.dumps(  # valid by the contract, but "bicycle" is not in the model run's ontology
        {
            "model_run_id": MODEL_RUNS[3],
            "data_row": {"global_key": "w.jpg"},
            "predictions": [
                {"type": "bbox", "name": "bicycle", "bbox": {"top": 1, "left": 1, "height": 9, "width": 9}}
            ],
        }
    ),
]


def demo_records(count: int, seed: int = 7) -> Iterator[tuple[bytes, bytes]]:
    """(key, value) for ``count`` valid messages with the invalid ones spread among them."""
    rng = random.Random(seed)
    spacing = max(1, count // (len(INVALID) + 1))
    for index in range(count):
        yield demo_message(index, rng).to_kafka()
        if index % spacing == spacing - 1 and index // spacing < len(INVALID):
            yield MODEL_RUNS[0].encode(), INVALID[index // spacing]


# --- running it ----------------------------------------------------------------------------------

#: The worker's drain on Ctrl-C: short, while the broker and the local server are still up.
WORKER_SHUTDOWN_TIMEOUT_S = 5.0
#: How long the summary may take to gather its figures from the broker and the local server.
SUMMARY_TIMEOUT_S = 10.0


@dataclass
class Progress:
    started: float = field(default_factory=time.monotonic)
    sent: int = 0
    committed: int = 0


def _spawn(args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    """A Python child with ``env`` and the demo's environment minus the worker's own settings: the
    demo sets all it needs, and a stray ``LOG_DIR`` in a shell would make the worker refuse to start."""
    inherited = {name: value for name, value in os.environ.items() if not name.startswith(OWN_PREFIXES)}
    return spawn_child([sys.executable, *args], env={**inherited, **env})


async def _stop(process: subprocess.Popen[bytes] | None, timeout_s: float) -> int | None:
    """SIGTERM, wait up to ``timeout_s`` (without blocking the event loop), then SIGKILL."""
    if process is None:
        return None
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    for _ in range(int(timeout_s / 0.05)):
        if process.poll() is not None:
            return process.returncode
        await asyncio.sleep(0.05)
    process.kill()
    return process.wait(timeout=5)


class Signals:
    """Ctrl-C (SIGINT) or SIGTERM: the first calls ``first``, any later one ``again``.

    The children run in their own sessions (``spawn_child``), so a terminal's Ctrl-C reaches the
    demo alone and the demo decides the order in which they stop.
    """

    HANDLED = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, first: Callable[[], object], again: Callable[[], object]) -> None:
        self._first, self._again = first, again
        self.received: int | None = None  # the first signal's number

    def __enter__(self) -> Signals:
        loop = asyncio.get_running_loop()
        for signum in self.HANDLED:
            loop.add_signal_handler(signum, self._on_signal, signum)
        return self

    def __exit__(self, *_: object) -> None:
        loop = asyncio.get_running_loop()
        for signum in self.HANDLED:
            loop.remove_signal_handler(signum)

    def _on_signal(self, signum: int) -> None:
        if self.received is None:
            self.received = signum
            self._first()
        else:
            self._again()


class Demo:
    """The demo's processes (broker, local Labelbox-compatible server, worker) and its producer."""

    def __init__(self) -> None:
        self.broker = EmbeddedBroker()
        self.sandbox: subprocess.Popen[bytes] | None = None
        self.worker: subprocess.Popen[bytes] | None = None
        self.base = ""
        self.progress = Progress()

    async def stream(self) -> bool:
        """Start everything, produce, follow the commits; True when all was committed in time."""
        self.broker.start()
        await create_topics(self.broker.bootstrap, {TOPIC: PARTITIONS, DLQ_TOPIC: 1})
        port = free_port()
        self.base = f"http://127.0.0.1:{port}"
        # Membership required, as by Labelbox: the worker registers the data rows (ENSURE_DATA_ROWS).
        sandbox_args = ["--port", str(port), "--processing-delay-s", "0.5", "--require-data-row-membership"]
        self.sandbox = _spawn(["-m", "labelbox_sandbox", *sandbox_args], {"SANDBOX_API_KEY": API_KEY})
        await _wait_http(f"{self.base}/_sandbox/counts")
        await _load_ontologies(self.base)
        self.worker = _spawn(["-m", "worker", "run"], _worker_env(self.broker.bootstrap, self.base))
        print(
            f"broker {self.broker.bootstrap}, Labelbox-compatible server {self.base}, "
            f"worker pid {self.worker.pid} (Ctrl-C stops the demo with a summary)",
            flush=True,
        )
        self.progress = Progress()
        async with asyncio.TaskGroup() as tasks:  # cancelling the demo cancels the producer too
            producing = tasks.create_task(_produce(self.broker.bootstrap, self.progress))
            return await _follow(self.broker.bootstrap, self.base, producing, self.progress)

    async def stop_worker(self) -> int | None:
        """SIGTERM: the worker drains and commits while the broker and the server are still up."""
        return await _stop(self.worker, WORKER_SHUTDOWN_TIMEOUT_S + 5.0)

    async def stop_servers(self) -> None:
        await _stop(self.sandbox, 10.0)
        self.broker.stop()

    def kill_at_once(self) -> None:
        """A second Ctrl-C: SIGKILL every process now, exit 130 without a summary."""
        for process in (self.worker, self.sandbox):
            if process is not None and process.poll() is None:
                process.kill()
        self.broker.kill()
        print("\nstopped at once (second interrupt): no summary", flush=True)
        os._exit(130)


async def _wait_http(url: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(url) as response:
                    if response.status < 500:
                        return
            await asyncio.sleep(0.2)
    raise RuntimeError(f"{url} did not answer within {timeout_s} s")


async def _produce(bootstrap: str, progress: Progress) -> dict[int, int]:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, max_request_size=MAX_MESSAGE_BYTES)
    await producer.start()
    ends: Counter[int] = Counter()
    try:
        pending = []
        for key, value in demo_records(MESSAGES):
            pending.append(await producer.send(TOPIC, value=value, key=key))
            if len(pending) >= 200:
                _record_ends(ends, await asyncio.gather(*pending))
                progress.sent += len(pending)
                pending.clear()
        _record_ends(ends, await asyncio.gather(*pending))
        progress.sent += len(pending)
    finally:
        await producer.stop()
    return dict(ends)


def _record_ends(ends: Counter[int], delivered: list[RecordMetadata]) -> None:
    for metadata in delivered:
        ends[metadata.partition] = max(ends[metadata.partition], metadata.offset + 1)


async def _committed(consumer: AIOKafkaConsumer) -> dict[int, int]:
    out = {}
    for partition in range(PARTITIONS):
        offset = await consumer.committed(TopicPartition(TOPIC, partition))
        out[partition] = offset or 0
    return out


async def _sandbox_counts(session: aiohttp.ClientSession, base: str) -> dict[str, dict[str, int]]:
    async with session.get(f"{base}/_sandbox/counts") as response:
        data = await response.json()
    counts: dict[str, dict[str, int]] = data.get("model_runs", data) if isinstance(data, dict) else {}
    return counts


def _imported(counts: dict[str, dict[str, int]]) -> int:
    return sum(int(c.get("rows", 0)) for c in counts.values() if isinstance(c, dict))


async def _follow(
    bootstrap: str, base: str, producing: asyncio.Task[dict[int, int]], progress: Progress
) -> bool:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=GROUP, enable_auto_commit=False)
    await consumer.start()
    try:
        async with aiohttp.ClientSession() as session:
            deadline = time.monotonic() + TIMEOUT_S
            while time.monotonic() < deadline:
                await asyncio.sleep(1.0)
                committed = await _committed(consumer)
                progress.committed = sum(committed.values())
                imported = _imported(await _sandbox_counts(session, base))
                elapsed = time.monotonic() - progress.started
                print(
                    f"[{elapsed:5.1f}s] produced {progress.sent:5d}  committed {progress.committed:5d}  "
                    f"predictions in Labelbox {imported:6d}",
                    flush=True,
                )
                if producing.done() and all(committed.get(p, 0) >= e for p, e in producing.result().items()):
                    return True
    finally:
        await consumer.stop()
    return False


async def _dead_letters(bootstrap: str) -> Counter[str]:
    """Dead-letter reasons, read from the beginning of the DLQ to its high watermark (bounded)."""
    partition = TopicPartition(DLQ_TOPIC, 0)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    reasons: Counter[str] = Counter()
    try:
        consumer.assign([partition])
        for _ in range(50):
            batch = await consumer.getmany(partition, timeout_ms=200)
            for record in batch.get(partition, []):
                reasons[dict(record.headers).get("dlq.reason", b"?").decode()] += 1
            end = consumer.highwater(partition)
            if end is not None and await consumer.position(partition) >= end:
                break
    finally:
        await consumer.stop()
    return reasons


async def _final_committed(bootstrap: str) -> int:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=GROUP, enable_auto_commit=False)
    await consumer.start()
    try:
        return sum((await _committed(consumer)).values())
    finally:
        await consumer.stop()


async def _summary(demo: Demo, outcome: str, worker_status: int | None) -> None:
    """Print what was done (so far): every figure read from the broker and the local server."""
    progress = demo.progress
    elapsed = time.monotonic() - progress.started
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        counts = await _sandbox_counts(session, demo.base)
    committed = await _final_committed(demo.broker.bootstrap)
    reasons = await _dead_letters(demo.broker.bootstrap)
    print("\n=== summary ===")
    print(f"finished: {outcome} in {elapsed:.1f} s")
    print(f"messages produced: {progress.sent}, consumed and committed: {committed}")
    for run, run_counts in sorted(counts.items()):
        if isinstance(run_counts, dict):
            print(f"  {run}: {run_counts.get('rows', 0)} predictions imported")
    print(f"predictions imported: {_imported(counts)}")
    print(f"dead-lettered: {sum(reasons.values())} {dict(reasons)}")
    rate, imported_rate = progress.sent / elapsed, _imported(counts) / elapsed
    print(f"throughput: {rate:.0f} messages/s, {imported_rate:.0f} predictions/s (wall clock, with start-up)")
    print(f"worker exited with status {worker_status}", flush=True)


async def _demo() -> int:
    """Run the demo; on Ctrl-C stop in order (producer, worker, server, broker) and exit 130."""
    demo = Demo()
    streaming = asyncio.create_task(demo.stream())
    with Signals(first=streaming.cancel, again=demo.kill_at_once) as signals:
        try:
            finished = await _until_done_or_interrupted(streaming)
            if signals.received is not None:
                print(
                    "\ninterrupted: stopping the producer, then the worker (it commits), then the servers;"
                    " Ctrl-C again stops at once",
                    flush=True,
                )
            worker_status = await demo.stop_worker()
            outcome = _outcome(finished, signals.received)
            try:
                await asyncio.wait_for(_summary(demo, outcome, worker_status), SUMMARY_TIMEOUT_S)
            except (TimeoutError, OSError, KafkaError, aiohttp.ClientError) as exc:
                print(f"\n=== summary ===\nfinished: {outcome}; figures unavailable: {exc!r}", flush=True)
        finally:
            await _stop(demo.worker, 1.0)  # only if the start-up failed before stop_worker
            await demo.stop_servers()
    if signals.received is not None:
        return 128 + signals.received
    return 0 if finished else 1


async def _until_done_or_interrupted(streaming: asyncio.Task[bool]) -> bool:
    """The stream's result; False when it was cancelled by a signal."""
    try:
        return await streaming
    except asyncio.CancelledError:
        if not streaming.cancelled():  # the demo itself was cancelled, not the stream
            raise
        return False


def _outcome(finished: bool, signum: int | None) -> str:
    if finished:
        return "yes"
    return "NO (timed out)" if signum is None else f"NO (interrupted by {signal.Signals(signum).name})"


async def _load_ontologies(base: str) -> None:
    async with aiohttp.ClientSession() as session:
        for run in MODEL_RUNS:
            async with session.put(
                f"{base}/_sandbox/model-runs/{run}/ontology", json=demo_ontology()
            ) as answer:
                answer.raise_for_status()


def _worker_env(bootstrap: str, base: str) -> dict[str, str]:
    return {
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "KAFKA_TOPIC": TOPIC,
        "KAFKA_DLQ_TOPIC": DLQ_TOPIC,
        "KAFKA_GROUP_ID": GROUP,
        "LABELBOX_API_KEY": API_KEY,
        "LABELBOX_GRAPHQL_URL": f"{base}/graphql",
        "LABELBOX_POLL_INTERVAL_S": "0.5",
        "BATCH_LINGER_S": "1.0",
        "METRICS_PORT": str(free_port()),
        "KAFKA_SESSION_TIMEOUT_MS": "6000",  # the embedded broker holds a group join for half of it
        "ENSURE_DATA_ROWS": "true",  # Labelbox refuses predictions on data rows outside the model run
        "SHUTDOWN_TIMEOUT_S": str(WORKER_SHUTDOWN_TIMEOUT_S),
        "LOG_FORMAT": "text",
        "LOG_LEVEL": "INFO",
    }


def main() -> int:
    """Entry point of ``python -m devtools.demo`` (``make run``)."""
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS") and os.environ.get("LABELBOX_API_KEY"):
        from worker import service

        return service.main()
    configure("INFO", "text")  # the demo's own Kafka clients log as the worker does
    try:
        return asyncio.run(_demo())
    except KeyboardInterrupt:  # Ctrl-C before the demo's handlers were in place: nothing started yet
        return 130


if __name__ == "__main__":
    sys.exit(main())
