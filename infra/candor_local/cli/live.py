"""`candor live SOURCE --collection C`: a live feed searched as it plays, through Rekognition's stream processors.

A video file (played at its own pace, `--loop` to replay it), a camera (`/dev/video0`, `camera:0`) or a
stream URL (rtsp://, http(s)://, rtmp://) is sampled at `--fps`; each sampled frame is put on the stack's
LiveFrameStream as a camera gateway would (candor/live/processors.py, `frame_record`). A stream processor
made for the run searches them in the collection and writes one record per analysed frame to a Kinesis data
stream, `candor-live-<processor>`, which is read as it fills: one line per face matched and per person first
seen, with the latency from capture to the record being read. At the end of the source, at Ctrl-C or after
`--duration`, the processor is stopped (which audits the run) and deleted with its results stream unless
`--keep`, and a summary goes to stderr.

The lines and the summary are plain functions of the output records, so they run without a stack.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar

from botocore.exceptions import BotoCoreError, ClientError

from candor.accountability.policy import GENERAL_PURPOSE
from candor.live.processors import frame_record
from candor_local.cli import connection
from candor_local.cli.client import CandorClient, CandorError
from candor_local.cli.face_api import SEARCH_THRESHOLD_HELP
from candor_local.emulator.worker import epoch_seconds

OUTPUT_STREAM_PREFIX = "candor-live-"
DEFAULT_ACCOUNT = "123456789012"  # when the endpoint has no STS (moto and LocalStack answer with this one)
PROCESSOR_ROLE = "CandorStreamProcessor"
DEFAULT_FPS = 5.0
POLL_S = 0.1  # how often the results stream is read
# After the last frame is sent: how long to wait for its record (a batch of ten 4-face frames takes a few s).
DRAIN_S = 5.0
STATUS_CHECK_S = 5.0  # how often the processor's status is read, to stop feeding one that FAILED
STREAM_TIMEOUT_S = 120.0  # for the results stream to be ACTIVE, and for the processor to stop
JPEG_QUALITY = 90
URL_SCHEMES = ("rtsp://", "rtsps://", "http://", "https://", "rtmp://", "rtmps://")

Item = TypeVar("Item")


def register(commands: argparse._SubParsersAction) -> None:
    """Add `candor live` to `candor`'s subcommands."""
    live = commands.add_parser(
        "live",
        help="search a live feed (video file, camera, stream URL) through a stream processor, printing matches",
        description="Creates a stream processor searching --collection (stating --purpose and --case as `candor "
        "search` does), feeds it the frames of SOURCE at --fps on the stack's LiveFrameStream, and prints each "
        "face matched and each person first seen as the records arrive, with the latency from capture. At the "
        "end of SOURCE, Ctrl-C or --duration the processor is stopped (its run is audited) and deleted unless "
        "--keep; a summary goes to stderr. Exit status 1 when the processor FAILED.",
    )
    live.add_argument("source", help="a video file, a camera (/dev/video0 or camera:0) or an rtsp/http(s)/rtmp URL")
    live.add_argument("--collection", required=True, help="search the faces in this collection")
    live.add_argument(
        "--fps", type=float, default=DEFAULT_FPS, help=f"frames sent per second (default {DEFAULT_FPS:g})"
    )
    live.add_argument("--loop", action="store_true", help="replay a video file until Ctrl-C or --duration")
    live.add_argument("--duration", type=float, help="stop after this many seconds")
    live.add_argument("--name", help="the stream processor's name (default live-<collection>-<random>)")
    live.add_argument("--threshold", type=float, help=SEARCH_THRESHOLD_HELP)
    live.add_argument(
        "--role-arn", help=f"the processor's RoleArn (default arn:aws:iam::<account>:role/{PROCESSOR_ROLE})"
    )
    live.add_argument(
        "--purpose",
        default=os.environ.get("CANDOR_PURPOSE"),
        help=f"what the search is for, as the collection declares it ($CANDOR_PURPOSE; default {GENERAL_PURPOSE})",
    )
    live.add_argument(
        "--case",
        default=os.environ.get("CANDOR_CASE"),
        help="the case reference, required for every purpose but general ($CANDOR_CASE)",
    )
    live.add_argument("--keep", action="store_true", help="keep the processor and its results stream afterwards")
    live.add_argument("--json", action="store_true", help="print each output record as one JSON line")
    live.set_defaults(run=cmd_live)


# --- the command ----------------------------------------------------------------------------------------------


def cmd_live(args: argparse.Namespace) -> int:
    client = CandorClient(connection.connected_stack())
    client.state(purpose=args.purpose, case=args.case)
    try:
        return run_live(client, args)
    except ClientError as error:
        details = error.response.get("Error", {})
        raise CandorError(details.get("Code", "Error"), details.get("Message", "")) from error


def run_live(client: CandorClient, args: argparse.Namespace, write: Callable[[str], None] = print) -> int:
    """Create, feed, read, stop and (unless --keep) delete; the exit status is 1 when the processor FAILED."""
    if args.fps <= 0:
        raise ValueError("--fps must be above 0")
    frame_stream = client.stack.live_frame_stream
    if not frame_stream:
        raise ValueError(
            "the stack names no LiveFrameStream (output LiveFrameStreamName): restart `candor up`, whose older "
            "state file lacks it, or deploy a template with live streams"
        )
    frames = source_frames(args.source, args.fps, args.loop)  # a missing file is said before anything is made
    try:
        client.rekognition.describe_collection(CollectionId=args.collection)
    except client.rekognition.exceptions.ResourceNotFoundException as error:
        raise ValueError(f"no collection {args.collection!r}: create it and enrol faces first") from error
    name = args.name or processor_name(args.collection)
    processor = create_processor(client, name, args.collection, args.threshold, args.role_arn)
    if not args.json:
        print(
            f"stream processor {name} RUNNING on '{args.collection}'; results on {processor.output_stream}",
            file=sys.stderr,
        )
    seen: set[int] = set()

    def show(record: dict[str, Any], started: float, latency_ms: float) -> None:
        if args.json:
            write(json.dumps({**record, "LatencyMillis": round(latency_ms, 1)}))
        else:
            for line in record_lines(record, started, latency_ms, seen):
                write(line)

    try:
        summary = feed(client, frame_stream, processor, frames, show, duration_s=args.duration)
    finally:
        failure = finish(client, processor, keep=args.keep)
    if failure:
        summary.failure = failure
    for line in summary_lines(summary):
        print(line, file=sys.stderr)
    return 1 if failure else 0


def processor_name(collection: str) -> str:
    """live-<collection>-<6 hex>, within Rekognition's 128 characters."""
    return f"live-{collection[:100]}-{uuid.uuid4().hex[:6]}"


# --- the source: sampled frames as JPEG, each with when it is due ---------------------------------------------


class SourceKind(StrEnum):
    FILE = "file"
    CAMERA = "camera"
    URL = "url"


def source_kind(source: str) -> SourceKind:
    """A stream URL by its scheme, a camera by /dev/video<N> or camera:<N>, else a file."""
    if source.lower().startswith(URL_SCHEMES):
        return SourceKind.URL
    if source.startswith("camera:") or source.startswith("/dev/video"):
        return SourceKind.CAMERA
    return SourceKind.FILE


def camera_device(source: str) -> str:
    """camera:0 -> /dev/video0; a device path as it is."""
    if source.startswith("camera:"):
        number = source.removeprefix("camera:")
        if not number.isdigit():
            raise ValueError(f"{source!r}: a camera is camera:<number> or /dev/video<number>")
        return f"/dev/video{number}"
    return source


def sample_frames(frames: Iterable[tuple[float, Item]], fps: float) -> Iterator[tuple[float, Item]]:
    """One frame per 1/fps of (time in seconds, frame) pairs: the first at or after each due time, its time
    counted from the first frame's. After a gap the next frame is taken and the count starts again from it,
    so a late frame is not followed by a burst."""
    step = 1.0 / fps
    first: float | None = None
    due = 0.0
    for at, item in frames:
        first = at if first is None else first
        offset = at - first
        if offset + 1e-6 < due:
            continue
        yield offset, item
        due += step
        if due <= offset:
            due = offset + step


def source_frames(source: str, fps: float, loop: bool = False) -> Iterator[tuple[float, bytes]]:
    """(seconds after the feed starts that the frame is due, JPEG) for each sampled frame of the source."""
    kind = source_kind(source)
    if kind is SourceKind.FILE:
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"{path} {'is not a file' if path.exists() else 'does not exist'}")
        return _file_frames(path, fps, loop)
    return _live_frames(source, kind, fps)


def _file_frames(path: Path, fps: float, loop: bool) -> Iterator[tuple[float, bytes]]:
    import av

    offset = 0.0
    while True:
        last: float | None = None
        with av.open(str(path)) as video:
            decoded = ((float(frame.time or 0.0), frame) for frame in video.decode(video=0))
            for at, frame in sample_frames(decoded, fps):
                yield offset + at, jpeg(frame.to_image())
                last = at
        if last is None:
            raise ValueError(f"{path} has no video frames")
        if not loop:
            return
        offset += last + 1.0 / fps


def _live_frames(source: str, kind: SourceKind, fps: float) -> Iterator[tuple[float, bytes]]:
    """A camera or stream as it comes: each frame is due when it is decoded."""
    import av

    if kind is SourceKind.CAMERA:
        container = av.open(camera_device(source), format="v4l2")
    else:
        container = av.open(source, timeout=10.0)
    with container:
        begun = time.monotonic()
        decoded = ((time.monotonic() - begun, frame) for frame in container.decode(video=0))
        for at, frame in sample_frames(decoded, fps):
            yield at, jpeg(frame.to_image())


def jpeg(image: Any) -> bytes:
    """A PIL image as JPEG."""
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()


# --- the processor and its results stream ---------------------------------------------------------------------


@dataclass(frozen=True)
class LiveProcessor:
    name: str  # the processor's, and its video stream's: frames are put with it as the partition key
    output_stream: str
    created_output: bool  # made for this run, so deleted with the processor


def account_id(client: CandorClient) -> str:
    try:
        sts = client.session.client("sts", endpoint_url=client.stack.endpoint_url)
        return str(sts.get_caller_identity()["Account"])
    except (ClientError, BotoCoreError):
        return DEFAULT_ACCOUNT


def kinesis_client(client: CandorClient) -> Any:
    return client.session.client("kinesis", endpoint_url=client.stack.endpoint_url)


def ensure_output_stream(kinesis: Any, name: str) -> tuple[str, bool]:
    """The ARN of the one-shard stream `name` once it is ACTIVE, made if it did not exist; and whether it was."""
    created = False
    try:
        kinesis.create_stream(StreamName=name, ShardCount=1)
        created = True
    except kinesis.exceptions.ResourceInUseException:
        pass  # it exists: its records are read from now on
    deadline = time.monotonic() + STREAM_TIMEOUT_S
    while True:
        summary = kinesis.describe_stream_summary(StreamName=name)["StreamDescriptionSummary"]
        if summary["StreamStatus"] in ("ACTIVE", "UPDATING"):
            return summary["StreamARN"], created
        if time.monotonic() > deadline:
            raise TimeoutError(f"Kinesis stream {name} not ACTIVE after {STREAM_TIMEOUT_S:.0f} s")
        time.sleep(0.5)


def create_processor(
    client: CandorClient, name: str, collection: str, threshold: float | None = None, role_arn: str | None = None
) -> LiveProcessor:
    """A RUNNING processor named `name` searching `collection`, reading the video stream of the same name and
    writing to candor-live-<name>."""
    account = account_id(client)
    output_stream = f"{OUTPUT_STREAM_PREFIX}{name}"
    output_arn, created = ensure_output_stream(kinesis_client(client), output_stream)
    face_search: dict[str, Any] = {"CollectionId": collection}
    if threshold is not None:
        face_search["FaceMatchThreshold"] = threshold
    region = client.stack.region
    rekognition: Any = client.rekognition  # the settings as the plain dict the request is
    rekognition.create_stream_processor(
        Name=name,
        Input={"KinesisVideoStream": {"Arn": f"arn:aws:kinesisvideo:{region}:{account}:stream/{name}/0"}},
        Output={"KinesisDataStream": {"Arn": output_arn}},
        RoleArn=role_arn or f"arn:aws:iam::{account}:role/{PROCESSOR_ROLE}",
        Settings={"FaceSearch": face_search},
    )
    processor = LiveProcessor(name, output_stream, created)
    try:
        client.rekognition.start_stream_processor(Name=name)
    except ClientError:
        _delete(client, processor)  # refused (the collection's rules): nothing is left behind
        raise
    return processor


def finish(client: CandorClient, processor: LiveProcessor, keep: bool = False) -> str | None:
    """Stop the processor if it runs (which audits its run), then delete it and the results stream made for
    it unless `keep`; returns its status message when it had FAILED."""
    rekognition = client.rekognition
    described = rekognition.describe_stream_processor(Name=processor.name)
    if described["Status"] == "RUNNING":
        rekognition.stop_stream_processor(Name=processor.name)
    deadline = time.monotonic() + STREAM_TIMEOUT_S
    while described["Status"] not in ("STOPPED", "FAILED"):  # Rekognition stops asynchronously
        if time.monotonic() > deadline:
            raise TimeoutError(f"stream processor {processor.name} still {described['Status']}")
        time.sleep(0.5)
        described = rekognition.describe_stream_processor(Name=processor.name)
    if not keep:
        _delete(client, processor)
    if described["Status"] == "FAILED":
        return str(described.get("StatusMessage") or "the stream processor FAILED without a message")
    return None


def _delete(client: CandorClient, processor: LiveProcessor) -> None:
    client.rekognition.delete_stream_processor(Name=processor.name)
    if processor.created_output:
        kinesis_client(client).delete_stream(StreamName=processor.output_stream, EnforceConsumerDeletion=True)


# --- the feed: frames out in one thread, records in on the other ----------------------------------------------


@dataclass
class LiveSummary:
    frames_sent: int = 0
    records: int = 0
    dropped: int = 0  # the sum of CandorFrame.DroppedFrames
    bad: int = 0  # records with CandorFrame.Error
    persons: set[int] = field(default_factory=set)
    matched: dict[int, str] = field(default_factory=dict)  # person -> the name of their best match so far
    latencies: list[tuple[float, float]] = field(default_factory=list)  # (capture offset s, latency ms)
    # (capture offset s, ms from capture until the record was on the output stream: its arrival there)
    written: list[tuple[float, float]] = field(default_factory=list)
    interrupted: bool = False
    failure: str | None = None

    def add(self, record: dict[str, Any], started: float, latency_ms: float, written_ms: float | None = None) -> None:
        self.records += 1
        extension = record.get("CandorFrame") or {}
        self.dropped += int(extension.get("DroppedFrames", 0))
        self.bad += "Error" in extension
        for face in record.get("FaceSearchResponse", []):
            index = face.get("Person", {}).get("Index")
            if index is not None:
                self.persons.add(int(index))
                if face.get("MatchedFaces") and int(index) not in self.matched:
                    self.matched[int(index)] = _best_name(face["MatchedFaces"])[0]
        self.latencies.append((_produced(record) - started, latency_ms))
        if written_ms is not None:
            self.written.append((_produced(record) - started, written_ms))


def feed(
    client: CandorClient,
    frame_stream: str,
    processor: LiveProcessor,
    frames: Iterable[tuple[float, bytes]],
    on_record: Callable[[dict[str, Any], float, float], None] = lambda *_: None,
    duration_s: float | None = None,
    drain_s: float = DRAIN_S,
) -> LiveSummary:
    """Send each frame when it is due (its capture time is when it is sent) while reading the results stream
    every POLL_S s; `on_record(record, started, latency_ms)` for each record, `started` being when the feed
    began (epoch seconds). Ends when the frames do (and their records are read, or `drain_s` passes without
    one), after `duration_s`, at Ctrl-C, or when the processor is no longer RUNNING."""
    kinesis = kinesis_client(client)
    iterators = latest_iterators(kinesis, processor.output_stream)  # before the first frame: none is missed
    summary = LiveSummary()
    stop = threading.Event()
    failures: list[BaseException] = []
    started_wall, started = time.time(), time.monotonic()

    def send() -> None:
        sender = kinesis_client(client)
        try:
            for due, image in frames:
                if stop.wait(max(0.0, started + due - time.monotonic())):
                    return
                key, data = frame_record(processor.name, time.time(), image)
                sender.put_record(StreamName=frame_stream, PartitionKey=key, Data=data)
                summary.frames_sent += 1
        except BaseException as error:  # said in the main thread
            failures.append(error)

    sender = threading.Thread(target=send, name="candor-live-frames", daemon=True)
    sender.start()
    last_news, next_status = time.monotonic(), time.monotonic() + STATUS_CHECK_S
    try:
        while True:
            records = read_records(kinesis, iterators)
            now = time.time()
            for record, arrived in records:
                latency_ms = (now - _produced(record)) * 1000
                summary.add(record, started_wall, latency_ms, (arrived - _produced(record)) * 1000)
                on_record(record, started_wall, latency_ms)
            if records or sender.is_alive():
                last_news = time.monotonic()
            if failures:
                raise failures[0]
            if duration_s is not None and time.monotonic() - started >= duration_s:
                stop.set()
            if not sender.is_alive():
                caught_up = summary.records + summary.dropped >= summary.frames_sent
                if caught_up or time.monotonic() - last_news > drain_s:
                    break
            if time.monotonic() >= next_status:
                next_status = time.monotonic() + STATUS_CHECK_S
                if client.rekognition.describe_stream_processor(Name=processor.name)["Status"] != "RUNNING":
                    break  # FAILED (a quota) or stopped elsewhere: nothing more will come
            if not records:
                time.sleep(POLL_S)
    except KeyboardInterrupt:
        summary.interrupted = True
    finally:
        stop.set()
        sender.join(timeout=10)
    return summary


def latest_iterators(kinesis: Any, stream: str) -> dict[str, str]:
    """A LATEST iterator per shard of the stream: what is written from now on."""
    shards = kinesis.list_shards(StreamName=stream)["Shards"]
    return {
        shard["ShardId"]: kinesis.get_shard_iterator(
            StreamName=stream, ShardId=shard["ShardId"], ShardIteratorType="LATEST"
        )["ShardIterator"]
        for shard in shards
    }


def read_records(kinesis: Any, iterators: dict[str, str]) -> list[tuple[dict[str, Any], float]]:
    """The records written since the last read, each shard's in order, with when each arrived on the stream
    (epoch seconds); the iterators move on."""
    found = []
    for shard, iterator in list(iterators.items()):
        try:
            response = kinesis.get_records(ShardIterator=iterator)
        except kinesis.exceptions.ProvisionedThroughputExceededException:
            continue  # AWS allows 5 reads a second per shard: this one waits for the next round
        found += [(json.loads(r["Data"]), epoch_seconds(r["ApproximateArrivalTimestamp"])) for r in response["Records"]]
        if response.get("NextShardIterator"):
            iterators[shard] = response["NextShardIterator"]
        else:
            del iterators[shard]  # closed
    return found


# --- what is printed: plain functions of the records ----------------------------------------------------------


def record_lines(record: dict[str, Any], started: float, latency_ms: float, seen: set[int]) -> list[str]:
    """One line per face matched and per person first seen (adding them to `seen`), and one for frames
    dropped and for a refused frame: `12.4 s  person 0: presenter (similarity 97.1)  latency 180 ms`."""
    at = f"{_produced(record) - started:.1f} s"
    lines = []
    extension = record.get("CandorFrame") or {}
    if extension.get("DroppedFrames"):
        count = int(extension["DroppedFrames"])
        lines.append(f"{at}  {count} frame{'s' if count != 1 else ''} dropped: analysed too late")
    if extension.get("Error"):
        error = extension["Error"]
        lines.append(f"{at}  frame refused: {error.get('Code')}: {error.get('Message')}")
    for face in record.get("FaceSearchResponse", []):
        index = face.get("Person", {}).get("Index")
        matches = face.get("MatchedFaces") or []
        if matches:
            name, similarity = _best_name(matches)
            who = f"{name} (similarity {similarity:.1f})"
        elif index not in seen:
            who = "no match"
        else:
            continue
        if index is not None:
            seen.add(int(index))
        lines.append(f"{at}  person {index}: {who}  latency {latency_ms:.0f} ms")
    return lines


def summary_lines(summary: LiveSummary) -> list[str]:
    latencies = [latency for _, latency in summary.latencies]
    p50, p99 = percentile(latencies, 50), percentile(latencies, 99)
    latency = "no records" if p50 is None or p99 is None else f"p50 {p50:.0f} ms, p99 {p99:.0f} ms"
    names = ", ".join(f"{index}: {name}" for index, name in sorted(summary.matched.items()))
    lines = [
        f"frames sent {summary.frames_sent}, records {summary.records} (bad {summary.bad}), "
        f"dropped {summary.dropped}, persons {len(summary.persons)}"
        + (f" ({names})" if names else "")
        + f"; latency {latency}"
    ]
    if summary.interrupted:
        lines.append("interrupted: records still on their way were not read")
    if summary.failure:
        lines.append(f"the stream processor FAILED: {summary.failure}")
    return lines


def percentile(values: Iterable[float], q: float) -> float | None:
    """The q-th percentile (0-100), interpolated between the nearest ranks; None for no values."""
    ordered = sorted(values)
    if not ordered:
        return None
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def _produced(record: dict[str, Any]) -> float:
    return float(record["InputInformation"]["KinesisVideo"]["ProducerTimestamp"])


def _best_name(matches: list[dict[str, Any]]) -> tuple[str, float]:
    best = max(matches, key=lambda match: match["Similarity"])
    face = best.get("Face", {})
    return str(face.get("ExternalImageId") or face.get("UserId") or face.get("FaceId")), float(best["Similarity"])
