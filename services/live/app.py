"""LiveFunction: the frames of live feeds from LiveFrameStream (Kinesis, in order per video stream), each
searched by the RUNNING stream processor that reads its stream; one record per analysed frame goes to the
processor's output stream (candor/live_processors.py).

Each frame's record is written as soon as it is analysed, and the tracker's state saved after the batch, so a
batch retried after a crash redoes only the frames that state had not recorded (at least once). A bad frame
is reported in its output record, never raised; what raises here (a table or stream that cannot be
reached) retries the batch."""

from __future__ import annotations

import base64
from typing import Any

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from candor.accountability.audit import AuditLog, log_anchor
from candor.accountability.rules import Accountability
from candor.adapters.aws import (
    DynamoAuditStore,
    DynamoQuotaCounter,
    DynamoStreamProcessorRepository,
    KinesisRecordWriter,
)
from candor.adapters.wiring import collection_indexes, detector_and_embedder
from candor.core.settings import Settings
from candor.live.processors import Frame, parse_frame
from candor.live_processors import LiveFrames, StreamProcessors

settings = Settings.from_env()
logger = Logger()
metrics = Metrics()
detector, embedder = detector_and_embedder(settings)
indexes = collection_indexes(settings)
processors = StreamProcessors(
    DynamoStreamProcessorRepository(settings.stream_processors_table),
    Accountability(
        AuditLog(DynamoAuditStore(settings.audit_table), on_append=log_anchor(logger.info)),
        DynamoQuotaCounter(settings.quotas_table),
    ),
    indexes,
)
live = LiveFrames(
    processors,
    detector,
    embedder,
    KinesisRecordWriter(),
    settings.min_detection_confidence,
    max_frame_age_s=settings.live_max_frame_age_ms / 1000,
)


def frames_of(event: dict[str, Any]) -> list[Frame]:
    """The event's Kinesis records as frames, in the order the shard holds them."""
    frames = []
    for record in event.get("Records", []):
        kinesis = record["kinesis"]
        frames.append(
            parse_frame(
                base64.b64decode(kinesis["data"]),
                str(kinesis["partitionKey"]),
                str(kinesis["sequenceNumber"]),
                float(kinesis.get("approximateArrivalTimestamp") or 0.0),
            )
        )
    return frames


@logger.inject_lambda_context
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, int]:
    """Returns the batch's frames by outcome: analysed, dropped (late), bad, unread (no processor running)."""
    counts = live.process(frames_of(event))
    for outcome, metric in (("analysed", "FramesAnalysed"), ("dropped", "FramesDropped"), ("bad", "BadFrames")):
        if counts[outcome]:
            metrics.add_metric(name=metric, unit=MetricUnit.Count, value=counts[outcome])
    if counts["dropped"] or counts["unread"]:
        logger.info("frames not analysed", extra={"dropped_late": counts["dropped"], "unread": counts["unread"]})
    return counts
