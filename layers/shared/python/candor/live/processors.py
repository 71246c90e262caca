"""Stream processors: Rekognition's live face search, on frames that arrive as they are captured.

A processor names a Kinesis video stream as its input, a Kinesis data stream as its output and a collection
to search. Kinesis Video's media API is not what Candor reads (moto and LocalStack cannot serve it): a
camera gateway puts each frame on the stack's LiveFrameStream (a Kinesis data stream) with the video
stream's name as the partition key, so one stream's frames stay in order on one shard. Each analysed
frame becomes one record on the processor's output stream in Rekognition's shape. No I/O here: records,
the frame and output formats, and the tracker's state between invocations."""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

import numpy as np

from candor.core.errors import InvalidParameterError
from candor.core.faces import BoundingBox, Match
from candor.core.settings import LIVE_REUSE_MIN_IOU, LIVE_SEARCH_MAX_AGE_MS
from candor.video.tracking import FaceTracker, Track, TrackedFace, box_overlap

STREAM_PROCESSOR_API = "StartStreamProcessor"  # the operation a processor's searches are audited under
_KVS_ARN = re.compile(r"^arn:[a-z\d-]+:kinesisvideo:[a-z\d-]+:\d{12}:stream/(?P<name>[a-zA-Z0-9_.-]+)/\d+$")


class ProcessorStatus(StrEnum):
    STOPPED = "STOPPED"
    STARTING = "STARTING"
    RUNNING = "RUNNING"
    FAILED = "FAILED"
    STOPPING = "STOPPING"
    UPDATING = "UPDATING"


@dataclass(frozen=True)
class StreamProcessor:
    """A processor as CreateStreamProcessor made it, with who made it and what for (the rules of every search
    it runs), and its current run (`session_id`) when it is RUNNING."""

    name: str
    arn: str
    input_stream_arn: str  # Input.KinesisVideoStream.Arn
    output_stream_arn: str  # Output.KinesisDataStream.Arn
    role_arn: str
    collection_id: str
    created_at: str
    updated_at: str
    caller_identity: str
    purpose: str
    case_reference: str | None = None
    threshold: float | None = None
    status: ProcessorStatus = ProcessorStatus.STOPPED
    status_message: str | None = None
    notification_topic_arn: str | None = None
    kms_key_id: str | None = None
    regions_of_interest: list[dict[str, Any]] | None = None
    data_sharing_opt_in: bool | None = None
    session_id: str | None = None
    session_started_at: str | None = None
    max_duration_s: int | None = None
    false_match_risk: float | None = None

    @property
    def input_stream_name(self) -> str:
        return video_stream_name(self.input_stream_arn)


def video_stream_name(arn: str) -> str:
    """The stream name of a Kinesis video stream ARN (arn:aws:kinesisvideo:<region>:<account>:stream/<name>/<time>)."""
    matched = _KVS_ARN.match(arn)
    if matched is None:
        raise InvalidParameterError(
            f"Input.KinesisVideoStream.Arn {arn!r} is not a Kinesis video stream ARN "
            "(arn:aws:kinesisvideo:<region>:<account>:stream/<name>/<creation time>)"
        )
    return matched["name"]


# --- frames in ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Frame:
    """One captured frame, as the camera gateway put it on LiveFrameStream."""

    stream_name: str
    producer_timestamp: float  # seconds since the epoch, when the frame was captured
    image: bytes
    sequence_number: str  # the Kinesis record's: Rekognition's FragmentNumber stands here
    server_timestamp: float  # when Kinesis received it


def frame_record(stream_name: str, producer_timestamp: float, image: bytes) -> tuple[str, bytes]:
    """(partition key, data) of one frame on LiveFrameStream: what `candor live` and a gateway put."""
    body = {
        "StreamName": stream_name,
        "ProducerTimestamp": producer_timestamp,
        "Image": base64.b64encode(image).decode(),
    }
    return stream_name, json.dumps(body).encode()


def parse_frame(data: bytes, partition_key: str, sequence_number: str, server_timestamp: float) -> Frame:
    """A LiveFrameStream record as a Frame: frame_record's JSON, or the bare bytes of an image (captured when
    it arrived). Whatever else it holds becomes a frame whose image is refused when it is decoded, so a bad
    record is still reported on its processor's output."""
    body: Any = None
    if data[:1] == b"{":
        try:
            body = json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError):
            body = None
    if not isinstance(body, dict) or not isinstance(body.get("Image"), str):
        return Frame(partition_key, server_timestamp, data, sequence_number, server_timestamp)
    try:
        image = base64.b64decode(body["Image"], validate=True)
    except binascii.Error:
        image = body["Image"].encode()  # not base64: refused as not an image
    try:
        producer_timestamp = float(body.get("ProducerTimestamp", server_timestamp))
    except (TypeError, ValueError):
        producer_timestamp = server_timestamp
    return Frame(partition_key, producer_timestamp, image, sequence_number, server_timestamp)


# --- records out -------------------------------------------------------------------------------------------


def output_record(
    processor: StreamProcessor,
    frame: Frame,
    faces: list[dict[str, Any]],
    *,
    dropped_frames: int = 0,
    error: dict[str, str] | None = None,
    status: ProcessorStatus | None = None,
) -> dict[str, Any]:
    """Rekognition's face search record for one frame, with Candor's `CandorFrame` (frames dropped since the
    last record because they arrived too late, the error of a bad frame) when there is something to say."""
    record: dict[str, Any] = {
        "InputInformation": {
            "KinesisVideo": {
                "StreamArn": processor.input_stream_arn,
                "FragmentNumber": frame.sequence_number,
                "ServerTimestamp": frame.server_timestamp,
                "ProducerTimestamp": frame.producer_timestamp,
                "FrameOffsetInSeconds": 0.0,
            }
        },
        "StreamProcessorInformation": {"Status": (status or processor.status).value},
        "FaceSearchResponse": faces,
    }
    extension: dict[str, Any] = {}
    if dropped_frames:
        extension["DroppedFrames"] = dropped_frames
    if error:
        extension["Error"] = error
    if extension:
        record["CandorFrame"] = extension
    return record


# --- state between frames ----------------------------------------------------------------------------------


@dataclass
class LiveSession:
    """What one run of a processor carries from frame to frame (kept between invocations): the tracker's
    active tracks, the frames dropped since the last record, and per person the faces matched (the audit
    entry at the end of the run) and whether they were counted against the quotas."""

    session_id: str
    tracker: FaceTracker
    frames: int = 0
    dropped: int = 0
    dropped_total: int = 0
    bad_frames: int = 0
    last_producer_timestamp: float = 0.0
    matches: dict[int, dict[str, float]] = field(default_factory=dict)  # track id -> face id -> best similarity
    counted: set[int] = field(default_factory=set)  # tracks counted as identifications
    searches: dict[int, TrackSearch] = field(default_factory=dict)  # track id -> its last search

    def continuing(self, boxes: Sequence[BoundingBox], min_iou: float = LIVE_REUSE_MIN_IOU) -> dict[int, Track]:
        """The faces of this frame (by position) that plainly continue a track seen in the last frame: the
        face's box and the track's overlap by `min_iou` at least, and neither comes near any other face or
        track (people close together are left to the tracker, which weighs their embeddings too)."""
        tracks = [track for track in self.tracker.active_tracks if track.missed == 0]
        near = [[box_overlap(track.faces[-1].box, box) for track in tracks] for box in boxes]
        continuing: dict[int, Track] = {}
        for position, overlaps in enumerate(near):
            close = [t for t, overlap in enumerate(overlaps) if overlap > 0.0]
            if len(close) != 1 or overlaps[close[0]] < min_iou:
                continue
            if sum(1 for other in near if other[close[0]] > 0.0) == 1:
                continuing[position] = tracks[close[0]]
        return continuing

    def kept_searches(
        self, continuing: dict[int, Track], now_ms: int, max_age_ms: int = LIVE_SEARCH_MAX_AGE_MS
    ) -> dict[int, tuple[Track, TrackSearch]]:
        """Which continuing faces keep their track's last search: those under `max_age_ms` old, and of those
        older only all but the oldest, while under twice that. One face is searched again a frame, so faces
        that arrived together do not all cost an embedding in the same frame a second later."""
        kept: dict[int, tuple[Track, TrackSearch]] = {}
        for position, track in continuing.items():
            search = self.searches.get(track.track_id)
            if search is not None and now_ms - search.at_ms < 2 * max_age_ms:
                kept[position] = (track, search)
        due = [position for position, (_, search) in kept.items() if now_ms - search.at_ms >= max_age_ms]
        if due:
            del kept[min(due, key=lambda position: kept[position][1].at_ms)]
        return kept

    def searched(self, track_id: int, at_ms: int, matches: Sequence[Match]) -> None:
        self.searches[track_id] = TrackSearch(at_ms, tuple(matches))

    def forget_ended_searches(self) -> None:
        active = {track.track_id for track in self.tracker.active_tracks}
        self.searches = {track: search for track, search in self.searches.items() if track in active}

    def to_dict(self) -> dict[str, Any]:
        return {
            "session_id": self.session_id,
            "frames": self.frames,
            "dropped": self.dropped,
            "dropped_total": self.dropped_total,
            "bad_frames": self.bad_frames,
            "last_producer_timestamp": self.last_producer_timestamp,
            "matches": {str(track): best for track, best in self.matches.items()},
            "counted": sorted(self.counted),
            "tracker": tracker_state(self.tracker),
            "searches": {str(track): search.to_dict() for track, search in self.searches.items()},
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LiveSession:
        return cls(
            session_id=str(data["session_id"]),
            tracker=tracker_from_state(data["tracker"]),
            frames=int(data.get("frames", 0)),
            dropped=int(data.get("dropped", 0)),
            dropped_total=int(data.get("dropped_total", 0)),
            bad_frames=int(data.get("bad_frames", 0)),
            last_producer_timestamp=float(data.get("last_producer_timestamp", 0.0)),
            matches={
                int(track): {face: float(s) for face, s in best.items()} for track, best in data["matches"].items()
            },
            counted={int(track) for track in data.get("counted", [])},
            searches={int(track): TrackSearch.from_dict(s) for track, s in data.get("searches", {}).items()},
        )


@dataclass(frozen=True)
class TrackSearch:
    """When a track's face was last embedded and searched, and the matches that search found."""

    at_ms: int
    matches: tuple[Match, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"at_ms": self.at_ms, "matches": [asdict(match) for match in self.matches]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrackSearch:
        return cls(int(data["at_ms"]), tuple(Match(**match) for match in data.get("matches", [])))


def tracker_state(tracker: FaceTracker) -> dict[str, Any]:
    """The active tracks, each as its last face and the weighted sum of its embeddings: all `update` reads
    (a track's embedding is that sum, normalised), in a few hundred numbers however long the stream runs."""
    tracks = []
    for track in tracker.active_tracks:
        last = track.faces[-1]
        total = np.sum([face.embedding * face.confidence for face in track.faces], axis=0)
        tracks.append(
            {
                "id": track.track_id,
                "missed": track.missed,
                "first_ms": track.first_ms,
                "last_ms": last.timestamp_ms,
                "box": [last.box.left, last.box.top, last.box.width, last.box.height],
                "sum": [round(float(v), 6) for v in total],
            }
        )
    return {"next_id": tracker.next_track_id, "tracks": tracks}


def tracker_from_state(state: dict[str, Any]) -> FaceTracker:
    """A tracker that links the next frame's faces as the one `tracker_state` saved would have: each track is
    its first time and one face of its last box whose embedding times confidence is the saved sum."""
    tracker = FaceTracker(first_track_id=int(state["next_id"]))
    for saved in state["tracks"]:
        total = np.asarray(saved["sum"], dtype=np.float32)
        weight = float(np.linalg.norm(total))
        left, top, width, height = (float(v) for v in saved["box"])
        box = BoundingBox(left, top, width, height)
        first = TrackedFace(int(saved["first_ms"]), box, np.zeros_like(total), 0.0)
        last = TrackedFace(int(saved["last_ms"]), box, total / max(weight, 1e-12), weight)
        tracker.restore(Track(int(saved["id"]), [first, last], int(saved["missed"])))
    return tracker
