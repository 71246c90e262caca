"""Stream processors (candor/live/): the control plane the face API serves (create, start, stop, describe,
list, update, delete) and the frames LiveFunction analyses as they arrive.

Rules: a processor states its purpose and case when it is created; every start passes the collection's
rules as a search does (purpose, case, threshold floor, false-match risk), every person it identifies is
counted against the quotas as they appear (a refusal stops the processor FAILED with the reason, and the
faces it would have named are not named), and each run is written to the audit log once, when it ends,
with every face it matched. Frames arrive in order per video stream; one that arrives later than
`max_frame_age_s` after its capture is dropped (counted and reported in the next record), so an overloaded
processor catches up instead of falling further behind. A frame that is not an image is reported in its
output record and the stream goes on."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import numpy as np

from candor.accountability.policy import Caller
from candor.accountability.rules import Accountability, SearchAuthorization
from candor.core.errors import CandorError, ResourceInUseError, ResourceNotFoundError
from candor.core.faces import LANDMARK_TYPES, DetectedFace, Match
from candor.core.settings import LIVE_MAX_FRAME_AGE_MS, LIVE_MAX_FRAME_BYTES, MAX_FACES
from candor.live.processors import (
    STREAM_PROCESSOR_API,
    Frame,
    LiveSession,
    ProcessorStatus,
    StreamProcessor,
    output_record,
)
from candor.ports import FaceDetector, FaceEmbedder, RecordWriter, StreamProcessorRepository
from candor.search import CollectionIndexes, authorize_collection_search, match_faces, returned_per_person
from candor.video.tracking import FaceTracker, Track
from candor.vision.images import decode_image
from candor.vision.quality import assess_face

logger = logging.getLogger(__name__)

MAX_MATCHES_PER_FACE = 5
ACTIVE = (ProcessorStatus.RUNNING, ProcessorStatus.STARTING, ProcessorStatus.STOPPING, ProcessorStatus.UPDATING)
IDLE = (ProcessorStatus.STOPPED, ProcessorStatus.FAILED)


@dataclass
class StreamProcessors:
    """The processors' table and the rules every search of theirs passes."""

    processors: StreamProcessorRepository
    accountability: Accountability | None = None
    indexes: CollectionIndexes | None = None
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))

    def create(self, processor: StreamProcessor) -> StreamProcessor:
        """Records a STOPPED processor; its purpose is checked against the collection's rules now."""
        authorized = self.authorize(processor, identifications=0)
        processor = replace(processor, false_match_risk=authorized.false_match_risk)
        self.processors.create(processor)
        return processor

    def get(self, name: str) -> StreamProcessor:
        processor = self.processors.get(name)
        if processor is None:
            raise ResourceNotFoundError(f"no stream processor {name!r}")
        return processor

    def start(self, name: str, max_duration_s: int | None = None) -> StreamProcessor:
        """RUNNING with a new session; the rules in force now hold for the run."""
        processor = self.get(name)
        if processor.status not in IDLE:
            raise ResourceInUseError(f"stream processor {name!r} is {processor.status.value}; stop it first")
        authorized = self.authorize(processor, identifications=0)
        now = self._now()
        running = replace(
            processor,
            status=ProcessorStatus.RUNNING,
            status_message=None,
            session_id=str(uuid.uuid4()),
            session_started_at=now,
            max_duration_s=max_duration_s,
            false_match_risk=authorized.false_match_risk,
            updated_at=now,
        )
        assert running.session_id is not None
        self.processors.put_session(name, LiveSession(running.session_id, FaceTracker()))
        self.processors.put(running, expected=IDLE)
        return running

    def stop(self, name: str) -> StreamProcessor:
        processor = self.get(name)
        if processor.status is not ProcessorStatus.RUNNING:
            raise ResourceInUseError(f"stream processor {name!r} is {processor.status.value}, not RUNNING")
        return self.end_run(processor, ProcessorStatus.STOPPED, None)

    def end_run(self, processor: StreamProcessor, status: ProcessorStatus, message: str | None) -> StreamProcessor:
        """Ends the processor's run: audits what it matched (once), forgets the tracker, records the status."""
        session = self.processors.get_session(processor.name)
        ended = replace(processor, status=status, status_message=message, session_id=None, updated_at=self._now())
        try:
            self.processors.put(ended, expected=(ProcessorStatus.RUNNING,))
        except ResourceInUseError:
            return self.get(processor.name)  # another invocation ended it first, and audited it
        if session is not None and session.session_id == processor.session_id:
            self._audit_run(processor, session)
        self.processors.delete_session(processor.name)
        return ended

    def update(
        self,
        name: str,
        regions_of_interest: list[dict[str, Any]] | None,
        data_sharing_opt_in: bool | None,
        to_delete: Sequence[str],
    ) -> StreamProcessor:
        processor = self.get(name)
        if processor.status not in IDLE:
            raise ResourceInUseError(f"stream processor {name!r} is {processor.status.value}; stop it to update it")
        regions = processor.regions_of_interest if regions_of_interest is None else regions_of_interest
        sharing = processor.data_sharing_opt_in if data_sharing_opt_in is None else data_sharing_opt_in
        updated = replace(
            processor,
            regions_of_interest=None if "RegionsOfInterest" in to_delete else regions,
            data_sharing_opt_in=sharing,
            updated_at=self._now(),
        )
        self.processors.put(updated, expected=IDLE)
        return updated

    def delete(self, name: str) -> None:
        processor = self.get(name)
        if processor.status not in IDLE:
            raise ResourceInUseError(f"stream processor {name!r} is {processor.status.value}; stop it to delete it")
        self.processors.delete(processor)
        self.processors.delete_session(name)

    def authorize(self, processor: StreamProcessor, identifications: int) -> SearchAuthorization:
        if self.accountability is None or self.indexes is None:
            raise RuntimeError("a stream processor is authorized where the collection rules and indexes are known")
        return authorize_collection_search(
            self.accountability, self.indexes, processor.collection_id, _caller(processor), STREAM_PROCESSOR_API,
            processor.threshold, identifications,
        )  # fmt: skip

    def _audit_run(self, processor: StreamProcessor, session: LiveSession) -> None:
        if self.accountability is None:
            return
        matches = returned_per_person(session.matches)
        try:
            authorized: SearchAuthorization | None = self.authorize(processor, identifications=0)
        except CandorError:
            authorized = None  # refused now (the policy changed): the run is still recorded, as it happened
        self.accountability.record_search(
            processor.collection_id,
            _caller(processor),
            STREAM_PROCESSOR_API,
            threshold=authorized.threshold if authorized else (processor.threshold or 0.0),
            matches=matches,
            searched=(
                f"stream processor {processor.name} run {session.session_id}: {session.frames} frames, "
                f"{session.dropped_total} dropped, {session.bad_frames} bad"
            ),
            authorization=authorized,
        )

    def _now(self) -> str:
        return self.clock().isoformat()


@dataclass
class LiveFrames:
    """Analyses the frames of RUNNING processors and writes one output record per frame."""

    processors: StreamProcessors
    detector: FaceDetector
    embedder: FaceEmbedder
    writer: RecordWriter
    min_confidence: float
    max_frame_age_s: float = LIVE_MAX_FRAME_AGE_MS / 1000
    max_frame_bytes: int = LIVE_MAX_FRAME_BYTES
    clock: Callable[[], float] = field(default=lambda: datetime.now(UTC).timestamp())

    def process(self, frames: Sequence[Frame]) -> dict[str, int]:
        """One batch, in order; per video stream the frames of its processor. Returns counts by outcome."""
        counts = {"analysed": 0, "dropped": 0, "bad": 0, "unread": 0}
        by_stream: dict[str, list[Frame]] = {}
        for frame in frames:
            by_stream.setdefault(frame.stream_name, []).append(frame)
        for stream_name, stream_frames in by_stream.items():
            processor = self.processors.processors.reading(stream_name)
            if processor is None or processor.status is not ProcessorStatus.RUNNING:
                counts["unread"] += len(stream_frames)  # no processor runs on this stream: nobody reads it
                continue
            for outcome, count in self._process_stream(processor, stream_frames).items():
                counts[outcome] += count
        return counts

    def _process_stream(self, processor: StreamProcessor, frames: list[Frame]) -> dict[str, int]:
        counts = {"analysed": 0, "dropped": 0, "bad": 0}
        session = self.processors.processors.get_session(processor.name)
        if session is None or session.session_id != processor.session_id:
            assert processor.session_id is not None
            session = LiveSession(processor.session_id, FaceTracker())
        _, index, records = self._collection(processor)
        threshold = processor.threshold if processor.threshold is not None else 0.0
        for frame in frames:
            if self._past_max_duration(processor):
                self.processors.processors.put_session(processor.name, session)
                self.processors.end_run(processor, ProcessorStatus.STOPPED, "StopSelector.MaxDurationInSeconds reached")
                return counts
            if frame.producer_timestamp <= session.last_producer_timestamp:
                continue  # redelivered after a restart: analysed and written already
            session.last_producer_timestamp = frame.producer_timestamp
            if self.clock() - frame.producer_timestamp > self.max_frame_age_s:
                session.dropped += 1
                session.dropped_total += 1
                counts["dropped"] += 1
                continue
            record, tracks = self._analyse(processor, session, frame, index, records, threshold)
            counts["analysed" if tracks is not None else "bad"] += 1
            session.frames += 1
            new_faces = [
                position
                for position, track in enumerate(tracks or [])
                if track not in session.counted and record["FaceSearchResponse"][position]["MatchedFaces"]
            ]
            failure = self._count_identifications(processor, session, record, new_faces)
            # Written as soon as it is analysed: a frame does not wait for the rest of its batch.
            self._write(processor, [record])
            if failure is not None:
                self.processors.processors.put_session(processor.name, session)
                self.processors.end_run(processor, ProcessorStatus.FAILED, failure)
                return counts
        self.processors.processors.put_session(processor.name, session)
        return counts

    def _analyse(
        self, processor: StreamProcessor, session: LiveSession, frame: Frame, index: Any, records: Any, threshold: float
    ) -> tuple[dict[str, Any], list[int] | None]:
        dropped, session.dropped = session.dropped, 0
        try:
            decoded = decode_image(frame.image, self.max_frame_bytes)
        except CandorError as error:
            session.bad_frames += 1
            failure = {"Code": error.code, "Message": error.message}
            return output_record(processor, frame, [], dropped_frames=dropped, error=failure), None
        pixels = decoded.pixels
        now_ms = int(frame.producer_timestamp * 1000)
        found = self.detector.detect(pixels, max_faces=MAX_FACES, min_confidence=self.min_confidence)
        continuing = session.continuing([face.bounding_box for face in found])
        vectors, matched, searched = self._search(session, pixels, found, continuing, now_ms, index, records, threshold)
        tracks = session.tracker.update(
            now_ms,
            [(face.bounding_box, vector, face.confidence) for face, vector in zip(found, vectors, strict=True)],
            continuing={position: track.track_id for position, track in continuing.items()},
        )
        for position in searched:
            session.searched(tracks[position], now_ms, matched[position])
        session.forget_ended_searches()
        height, width = pixels.shape[:2]
        faces = []
        for face, track, matches in zip(found, tracks, matched, strict=True):
            best = session.matches.setdefault(track, {})
            for match in matches:
                best[match.face_id] = max(best.get(match.face_id, 0.0), match.similarity)
            faces.append(
                {
                    "DetectedFace": _face_detail(pixels, face, width, height),
                    "MatchedFaces": [_matched_face(match) for match in matches],
                    "Person": {"Index": track},
                }
            )
        return output_record(processor, frame, faces, dropped_frames=dropped), tracks

    def _search(
        self,
        session: LiveSession,
        pixels: np.ndarray,
        found: list[DetectedFace],
        continuing: dict[int, Track],
        now_ms: int,
        index: Any,
        records: Any,
        threshold: float,
    ) -> tuple[list[np.ndarray], list[list[Match]], list[int]]:
        """Each face's embedding and matches, and which faces were embedded and searched for this frame: a face
        that continues a track keeps that track's last search while it is recent."""
        kept = session.kept_searches(continuing, now_ms)
        fresh = [position for position in range(len(found)) if position not in kept]
        fresh_vectors = self.embedder.embed_faces(pixels, [found[position] for position in fresh])
        fresh_matches = match_faces(index, records, fresh_vectors, threshold, MAX_MATCHES_PER_FACE) if fresh else []
        # A face erased since the kept search is not named again.
        kept_ids = {match.face_id for _, search in kept.values() for match in search.matches}
        alive = records.existing(sorted(kept_ids)) if kept_ids else set()
        searched_now = {position: (fresh_vectors[n], fresh_matches[n]) for n, position in enumerate(fresh)}
        vectors: list[np.ndarray] = []
        matched: list[list[Match]] = []
        for position in range(len(found)):
            if position in searched_now:
                vector, matches = searched_now[position]
            else:
                track, search = kept[position]
                vector = track.embedding
                matches = [match for match in search.matches if match.face_id in alive]
            vectors.append(vector)
            matched.append(matches)
        return vectors, matched, fresh

    def _count_identifications(
        self, processor: StreamProcessor, session: LiveSession, record: dict[str, Any], new_faces: list[int]
    ) -> str | None:
        """Counts the persons this frame matches for the first time against the quotas; refused, their
        matches are withheld and the processor fails with the reason."""
        faces = record["FaceSearchResponse"]
        new_tracks = {faces[position]["Person"]["Index"] for position in new_faces}
        if not new_tracks:
            return None
        try:
            self.processors.authorize(processor, identifications=len(new_tracks))
        except CandorError as error:
            for position in new_faces:
                faces[position]["MatchedFaces"] = []
            for track in new_tracks:
                session.matches.pop(track, None)
            return f"the face search was refused: {error.message}"
        session.counted |= new_tracks
        return None

    def _collection(self, processor: StreamProcessor) -> Any:
        if self.processors.indexes is None:
            raise RuntimeError("live frames are searched where the collection indexes are known")
        return self.processors.indexes.get(processor.collection_id)

    def _past_max_duration(self, processor: StreamProcessor) -> bool:
        if not processor.max_duration_s or not processor.session_started_at:
            return False
        started = datetime.fromisoformat(processor.session_started_at).timestamp()
        return self.clock() - started > processor.max_duration_s

    def _write(self, processor: StreamProcessor, outputs: list[dict[str, Any]]) -> None:
        if outputs:
            self.writer.put_records(
                processor.output_stream_arn, processor.role_arn, [(processor.name, record) for record in outputs]
            )


def _face_detail(pixels: np.ndarray, face: DetectedFace, width: int, height: int) -> dict[str, Any]:
    assessed = assess_face(pixels, face)
    box = face.bounding_box
    return {
        "BoundingBox": {"Width": box.width / width, "Height": box.height / height, "Left": box.left / width,
                        "Top": box.top / height},
        "Confidence": face.confidence * 100,
        "Landmarks": [
            {"Type": name, "X": float(x) / width, "Y": float(y) / height}
            for name, (x, y) in zip(LANDMARK_TYPES, face.landmarks, strict=True)
        ],
        "Pose": {"Roll": assessed.pose.roll, "Yaw": assessed.pose.yaw, "Pitch": assessed.pose.pitch},
        "Quality": {"Brightness": assessed.quality.brightness, "Sharpness": assessed.quality.sharpness},
    }  # fmt: skip


def _matched_face(match: Match) -> dict[str, Any]:
    face: dict[str, Any] = {"FaceId": match.face_id}
    if match.photo_id:
        face["ImageId"] = match.photo_id
    if match.external_image_id:
        face["ExternalImageId"] = match.external_image_id
    return {"Similarity": match.similarity, "Face": face}


def _caller(processor: StreamProcessor) -> Caller:
    return Caller(processor.caller_identity, processor.purpose, processor.case_reference)
