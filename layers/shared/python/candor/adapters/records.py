"""Plain-dict forms of the records, shared by every adapter (DynamoDB needs Decimal instead of float)."""

from __future__ import annotations

import dataclasses
from decimal import Decimal
from typing import Any

import numpy as np

from candor.accountability.policy import CollectionPolicy
from candor.core.faces import BoundingBox, DetectedFace, Enrolment, FaceRecord, PhotoRecord, PhotoStatus
from candor.live.processors import ProcessorStatus, StreamProcessor
from candor.ports import Collection, IndexChange, User
from candor.video.jobs import JobKind, JobStatus, NotificationChannel, VideoJob, VideoRef


def to_item(value: Any) -> Any:
    """Floats become Decimal (DynamoDB's number type), recursively: six decimals, or six significant digits
    for values under 0.001 (a risk limit of 1e-7 must not become 0)."""
    if isinstance(value, float):
        return Decimal(f"{value:.6g}" if 0 < abs(value) < 1e-3 else str(round(value, 6)))
    if isinstance(value, dict):
        return {k: to_item(v) for k, v in value.items() if v is not None}
    if isinstance(value, list | tuple):
        return [to_item(v) for v in value]
    return value


def from_item(value: Any) -> Any:
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, dict):
        return {k: from_item(v) for k, v in value.items()}
    if isinstance(value, list):
        return [from_item(v) for v in value]
    return value


def photo_to_dict(photo: PhotoRecord) -> dict[str, Any]:
    enrolment = photo.enrolment
    return {
        "photo_id": photo.photo_id,
        "bucket": photo.bucket,
        "key": photo.key,
        "status": str(photo.status),
        "image_width": photo.image_width,
        "image_height": photo.image_height,
        "face_count": len(photo.faces),
        "faces": [
            dict(face.to_dict(), face_id=face_id) for face, face_id in zip(photo.faces, photo.face_ids, strict=True)
        ],
        "collection_id": enrolment.collection_id if enrolment else None,
        "external_image_id": enrolment.external_image_id if enrolment else None,
        "consent_reference": enrolment.consent_reference if enrolment else None,
        "error_code": photo.error_code,
        "error_message": photo.error_message,
        "detector_version": photo.detector_version,
        "source_etag": photo.source_etag,
        "source_modified": photo.source_modified,
        "embedder_version": photo.embedder_version,
        "faces_truncated": photo.faces_truncated,
        "expires_at": photo.expires_at,
    }


def photo_from_dict(data: dict[str, Any]) -> PhotoRecord:
    data = from_item(data)
    faces = data.get("faces", [])
    enrolment = (
        Enrolment(data["collection_id"], data["external_image_id"], data.get("consent_reference"))
        if data.get("collection_id")
        else None
    )
    return PhotoRecord(
        photo_id=data["photo_id"],
        bucket=data["bucket"],
        key=data["key"],
        status=PhotoStatus(data["status"]),
        image_width=int(data.get("image_width", 0)),
        image_height=int(data.get("image_height", 0)),
        faces=[DetectedFace.from_dict(face) for face in faces],
        face_ids=[face["face_id"] for face in faces],
        enrolment=enrolment,
        error_code=data.get("error_code"),
        error_message=data.get("error_message"),
        detector_version=data.get("detector_version"),
        source_etag=data.get("source_etag"),
        source_modified=data.get("source_modified"),
        embedder_version=data.get("embedder_version"),
        faces_truncated=bool(data.get("faces_truncated", False)),
        expires_at=data.get("expires_at"),
    )


def face_to_dict(face: FaceRecord) -> dict[str, Any]:
    return {
        "face_id": face.face_id,
        "photo_id": face.photo_id,
        "bounding_box": face.bounding_box.to_dict(),
        "confidence": face.confidence,
        # 512 float32 little-endian: 2 KB per face instead of ~10 KB as a list of numbers.
        "embedding": np.asarray(face.embedding, dtype="<f4").tobytes(),
        "model_version": face.model_version,
        "collection_id": face.collection_id,
        "external_image_id": face.external_image_id,
        "consent_reference": face.consent_reference,
        "image_width": face.image_width,
        "image_height": face.image_height,
        "user_id": face.user_id,
        "expires_at": face.expires_at,
    }


def face_from_dict(data: dict[str, Any]) -> FaceRecord:
    data = from_item(data)
    raw = data["embedding"]
    raw = raw.value if hasattr(raw, "value") else raw  # boto3 wraps binary attributes
    return FaceRecord(
        face_id=data["face_id"],
        photo_id=data["photo_id"],
        bounding_box=BoundingBox.from_dict(data["bounding_box"]),
        confidence=float(data["confidence"]),
        embedding=np.frombuffer(bytes(raw), dtype="<f4").copy(),
        model_version=data["model_version"],
        collection_id=data.get("collection_id"),
        external_image_id=data.get("external_image_id"),
        consent_reference=data.get("consent_reference"),
        image_width=int(data.get("image_width", 0)),
        image_height=int(data.get("image_height", 0)),
        user_id=data.get("user_id"),
        expires_at=data.get("expires_at"),
    )


def collection_to_dict(collection: Collection) -> dict[str, Any]:
    return {
        "collection_id": collection.collection_id,
        "created_at": collection.created_at,
        "face_model_version": collection.face_model_version,
        "change_seq": collection.change_seq,
        "index_engine": collection.index_engine,
        "policy": collection.policy.to_dict(),
    }


def collection_from_dict(data: dict[str, Any]) -> Collection:
    data = from_item(data)
    return Collection(
        collection_id=data["collection_id"],
        created_at=data["created_at"],
        face_model_version=data["face_model_version"],
        change_seq=int(data.get("change_seq", 0)),
        index_engine=str(data.get("index_engine", "in-function")),
        policy=CollectionPolicy.from_dict(data.get("policy")),
    )


def change_to_dict(collection_id: str, change: IndexChange, expires_at: int) -> dict[str, Any]:
    # A user of None is stored as "": DynamoDB items hold no None, and a user id is never empty.
    return {
        "collection_id": collection_id,
        "seq": change.seq,
        "added": list(change.added),
        "removed": list(change.removed),
        "users": [[face_id, user_id or ""] for face_id, user_id in change.users],
        "expires_at": expires_at,
    }


def change_from_dict(data: dict[str, Any]) -> IndexChange:
    data = from_item(data)
    return IndexChange(
        added=tuple(data.get("added", [])),
        removed=tuple(data.get("removed", [])),
        users=tuple((face_id, user_id or None) for face_id, user_id in data.get("users", [])),
        seq=int(data["seq"]),
    )


def user_to_dict(user: User) -> dict[str, Any]:
    return {"collection_id": user.collection_id, "user_id": user.user_id, "created_at": user.created_at}


def user_from_dict(data: dict[str, Any]) -> User:
    data = from_item(data)
    return User(collection_id=data["collection_id"], user_id=data["user_id"], created_at=data["created_at"])


def video_job_to_dict(job: VideoJob) -> dict[str, Any]:
    data: dict[str, Any] = {
        "job_id": job.job_id,
        "kind": job.kind.value,
        "video": job.video.to_dict(),
        "created_at": job.created_at,
        "caller": job.caller_identity,
        "purpose": job.purpose,
        "case_reference": job.case_reference,
        "collection_id": job.collection_id,
        "threshold": job.threshold,
        "job_tag": job.job_tag,
        "sample_interval_ms": job.sample_interval_ms,
        "status": job.status.value,
        "status_message": job.status_message,
        "metadata": job.metadata,
        "segments": job.segments,
        "completed_at": job.completed_at,
        "false_match_risk": job.false_match_risk,
    }
    if job.notification is not None:
        data["notification"] = {"topic_arn": job.notification.topic_arn, "role_arn": job.notification.role_arn}
    if job.segments_done:
        data["segments_done"] = set(job.segments_done)
    return data


def video_job_from_dict(data: dict[str, Any]) -> VideoJob:
    notification = data.get("notification")
    return VideoJob(
        job_id=str(data["job_id"]),
        kind=JobKind(data["kind"]),
        video=VideoRef.from_dict(data["video"]),
        created_at=str(data["created_at"]),
        caller_identity=str(data["caller"]),
        purpose=str(data["purpose"]),
        case_reference=data.get("case_reference"),
        collection_id=data.get("collection_id"),
        threshold=float(data["threshold"]) if data.get("threshold") is not None else None,
        job_tag=data.get("job_tag"),
        notification=NotificationChannel(notification["topic_arn"], notification["role_arn"]) if notification else None,
        sample_interval_ms=int(data.get("sample_interval_ms", 200)),
        status=JobStatus(data["status"]),
        status_message=data.get("status_message") or None,
        metadata=data.get("metadata"),
        segments=int(data["segments"]) if data.get("segments") is not None else None,
        segments_done=frozenset(int(n) for n in data.get("segments_done", ())),
        completed_at=data.get("completed_at"),
        false_match_risk=float(data["false_match_risk"]) if data.get("false_match_risk") is not None else None,
    )


def stream_processor_to_dict(processor: StreamProcessor) -> dict[str, Any]:
    data = {name: getattr(processor, name) for name in STREAM_PROCESSOR_FIELDS}
    data["status"] = processor.status.value
    return data


def stream_processor_from_dict(data: dict[str, Any]) -> StreamProcessor:
    values: dict[str, Any] = {name: data[name] for name in STREAM_PROCESSOR_FIELDS if name in data}
    values["status"] = ProcessorStatus(data.get("status", ProcessorStatus.STOPPED.value))
    return StreamProcessor(**values)


STREAM_PROCESSOR_FIELDS = tuple(field.name for field in dataclasses.fields(StreamProcessor))
