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
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import numpy as np
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.structs import RecordMetadata

from schemas import (
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
from worker.embedded import EmbeddedBroker, create_topics, free_port

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


@dataclass
class Progress:
    started: float = field(default_factory=time.monotonic)
    sent: int = 0
    committed: int = 0


def _spawn(args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, *args], env={**os.environ, **env})


def _stop(process: subprocess.Popen[bytes] | None) -> int | None:
    if process is None or process.poll() is not None:
        return None if process is None else process.returncode
    process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout=40)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait(timeout=10)


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
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, max_request_size=16 * 1024 * 1024)
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
    bootstrap: str, base: str, ends: asyncio.Future[dict[int, int]], progress: Progress
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
                if ends.done() and all(committed.get(p, 0) >= end for p, end in ends.result().items()):
                    return True
    finally:
        await consumer.stop()
    return False


async def _dead_letters(bootstrap: str) -> Counter[str]:
    consumer = AIOKafkaConsumer(DLQ_TOPIC, bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    reasons: Counter[str] = Counter()
    try:
        for _ in range(10):
            batch = await consumer.getmany(timeout_ms=300)
            for records in batch.values():
                for record in records:
                    reasons[dict(record.headers).get("dlq.reason", b"?").decode()] += 1
    finally:
        await consumer.stop()
    return reasons


async def _summary(bootstrap: str, base: str, progress: Progress, finished: bool) -> None:
    elapsed = time.monotonic() - progress.started
    async with aiohttp.ClientSession() as session:
        counts = await _sandbox_counts(session, base)
    reasons = await _dead_letters(bootstrap)
    print("\n=== summary ===")
    print(f"finished: {'yes' if finished else 'NO (timed out)'} in {elapsed:.1f} s")
    print(f"messages produced and consumed: {progress.sent} (committed: {progress.committed})")
    for run, run_counts in sorted(counts.items()):
        if isinstance(run_counts, dict):
            print(f"  {run}: {run_counts.get('rows', 0)} predictions imported")
    print(f"predictions imported: {_imported(counts)}")
    print(f"dead-lettered: {sum(reasons.values())} {dict(reasons)}")
    rate, imported_rate = progress.sent / elapsed, _imported(counts) / elapsed
    print(f"throughput: {rate:.0f} messages/s, {imported_rate:.0f} predictions/s (wall clock, with start-up)")


async def _demo() -> int:
    broker = EmbeddedBroker()
    sandbox = worker = None
    try:
        broker.start()
        await create_topics(broker.bootstrap, {TOPIC: PARTITIONS, DLQ_TOPIC: 1})
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        sandbox = _spawn(
            ["-m", "worker.sandbox", "--port", str(port), "--processing-delay-s", "0.5"],
            {"SANDBOX_API_KEY": API_KEY},
        )
        await _wait_http(f"{base}/_sandbox/counts")
        await _load_ontologies(base)
        worker = _spawn(["-m", "worker", "run"], _worker_env(broker.bootstrap, base))
        print(
            f"broker {broker.bootstrap}, Labelbox-compatible server {base}, worker pid {worker.pid}",
            flush=True,
        )
        progress = Progress()
        ends: asyncio.Future[dict[int, int]] = asyncio.get_running_loop().create_future()
        producing = asyncio.create_task(_produce(broker.bootstrap, progress))
        producing.add_done_callback(lambda t: ends.set_result(t.result()) if not t.exception() else None)
        finished = await _follow(broker.bootstrap, base, ends, progress)
        await producing
        await _summary(broker.bootstrap, base, progress, finished)
        return 0 if finished else 1
    finally:
        status = _stop(worker)
        print(f"worker exited with status {status}")
        _stop(sandbox)
        broker.stop()


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
        "LOG_FORMAT": "text",
        "LOG_LEVEL": "INFO",
    }


def main() -> int:
    """Entry point of ``python -m worker demo`` (``make run``)."""
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS") and os.environ.get("LABELBOX_API_KEY"):
        from worker import service

        return service.main()
    return asyncio.run(_demo())
