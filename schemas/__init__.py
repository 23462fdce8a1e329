"""Prediction message contract v1: what producers publish to Kafka for the ingestion worker.

Build a message from these models and publish ``message.to_kafka()``::

    msg = PredictionMessage(
        model_run_id="...", data_row=DataRowRef(global_key="img-1.jpg"),
        predictions=[BBoxPrediction(type="bbox", name="car", bbox=BBox.from_corners(10, 20, 110, 80))],
    )
    key, value = msg.to_kafka()
"""

from schemas._base import MAX_MESSAGE_BYTES, CustomMetric, DataRowRef
from schemas.errors import REASON_CODES, reason_of, summarize
from schemas.masks import PngMask, Rle, RleMask, UrlMask, mask_from_array
from schemas.message import (
    CONTRACT_VERSION,
    MAX_PER_FEATURE,
    MESSAGE_ADAPTER,
    Message,
    NdjsonMessage,
    PayloadKey,
    PredictionMessage,
)
from schemas.predictions import (
    Answer,
    BBox,
    BBoxPrediction,
    Checklist,
    ChecklistPrediction,
    Classification,
    ConfusionMatrixMetric,
    MaskPrediction,
    Point,
    PointPrediction,
    PolygonPrediction,
    PolylinePrediction,
    Prediction,
    Radio,
    RadioPrediction,
    ScalarMetric,
    Text,
    TextPrediction,
)

__all__ = [
    "CONTRACT_VERSION",
    "MAX_MESSAGE_BYTES",
    "MAX_PER_FEATURE",
    "MESSAGE_ADAPTER",
    "REASON_CODES",
    "Answer",
    "BBox",
    "BBoxPrediction",
    "Checklist",
    "ChecklistPrediction",
    "Classification",
    "ConfusionMatrixMetric",
    "CustomMetric",
    "DataRowRef",
    "MaskPrediction",
    "Message",
    "NdjsonMessage",
    "PayloadKey",
    "PngMask",
    "Point",
    "PointPrediction",
    "PolygonPrediction",
    "PolylinePrediction",
    "Prediction",
    "PredictionMessage",
    "Radio",
    "RadioPrediction",
    "Rle",
    "RleMask",
    "ScalarMetric",
    "Text",
    "TextPrediction",
    "UrlMask",
    "mask_from_array",
    "reason_of",
    "summarize",
]
