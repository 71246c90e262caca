"""Rekognition Video's stored-video face operations on Candor's jobs (candor/video_jobs.py): StartFaceDetection,
GetFaceDetection, StartFaceSearch, GetFaceSearch. A Start call records and queues the job (VideoFunction runs
it); a Get call pages its stored results in Rekognition's shapes. Requests conform to botocore's model before
they arrive here (protocol.py)."""

from __future__ import annotations

import base64
import binascii
import json
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from candor.core.errors import (
    InvalidPaginationTokenError,
    InvalidParameterError,
    InvalidS3ObjectError,
    ResourceNotFoundError,
)
from candor.core.faces import LANDMARK_TYPES
from candor.core.settings import MAX_VIDEO_RESULTS_PAGE
from candor.video.jobs import (
    FaceSample,
    JobKind,
    JobStatus,
    NotificationChannel,
    VideoJob,
    VideoRef,
    new_job_id,
    request_fingerprint,
)
from candor.video_jobs import VideoJobs

if TYPE_CHECKING:
    from rekognition import FaceApi


def start_face_detection(api: FaceApi, request: dict[str, Any]) -> dict[str, Any]:
    return {"JobId": _start(api, request, JobKind.FACE_DETECTION).job_id}


def start_face_search(api: FaceApi, request: dict[str, Any]) -> dict[str, Any]:
    """The collection's rules are checked now (purpose, case, floor, risk; refusals audited) and again when the
    results are ready, when the search is audited once with every match and counted against the quotas."""
    return {"JobId": _start(api, request, JobKind.FACE_SEARCH).job_id}


def get_face_detection(api: FaceApi, request: dict[str, Any]) -> dict[str, Any]:
    job, response = _job_response(api, request, JobKind.FACE_DETECTION)
    if job.status is JobStatus.SUCCEEDED:
        results = _results(api, job)
        faces = [
            {"Timestamp": face.timestamp_ms, "Face": _face_detail(face, results.width, results.height)}
            for face in results.faces
        ]
        page, next_token = _page(faces, request, job, "TIMESTAMP")
        response["Faces"] = page
        if next_token:
            response["NextToken"] = next_token
    return response


def get_face_search(api: FaceApi, request: dict[str, Any]) -> dict[str, Any]:
    job, response = _job_response(api, request, JobKind.FACE_SEARCH)
    if job.false_match_risk is not None:
        response["FalseMatchRisk"] = job.false_match_risk
    if job.status is JobStatus.SUCCEEDED:
        results = _results(api, job)
        sort_by = request.get("SortBy", "TIMESTAMP")
        faces = results.faces
        if sort_by == "INDEX":
            faces = sorted(faces, key=lambda face: (face.person or 0, face.timestamp_ms))
        persons = [_person_match(face, results.width, results.height) for face in faces]
        page, next_token = _page(persons, request, job, sort_by)
        response["Persons"] = page
        if next_token:
            response["NextToken"] = next_token
    return response


def _start(api: FaceApi, request: dict[str, Any], kind: JobKind) -> VideoJob:
    videos = _videos(api)
    s3_object = request["Video"].get("S3Object") or {}
    if not s3_object.get("Bucket") or not s3_object.get("Name"):
        raise InvalidParameterError("Video.S3Object needs Bucket and Name")
    if api.video_buckets and s3_object["Bucket"] not in api.video_buckets:
        # Said plainly here, where S3 would answer a bare 403 for a bucket the roles may not read.
        raise InvalidS3ObjectError(
            f"videos are read from the stack's upload bucket ({', '.join(api.video_buckets)}) only, "
            f"not {s3_object['Bucket']!r}"
        )
    channel = request.get("NotificationChannel")
    token = request.get("ClientRequestToken")
    caller = api.caller
    job = VideoJob(
        job_id=new_job_id(),
        kind=kind,
        video=VideoRef(s3_object["Bucket"], s3_object["Name"], s3_object.get("Version") or None),
        created_at=datetime.now(UTC).isoformat(),
        caller_identity=caller.identity,
        purpose=caller.purpose,
        case_reference=caller.case_reference,
        collection_id=request.get("CollectionId"),
        threshold=float(request["FaceMatchThreshold"]) if "FaceMatchThreshold" in request else None,
        job_tag=request.get("JobTag"),
        notification=NotificationChannel(channel["SNSTopicArn"], channel["RoleArn"]) if channel else None,
        sample_interval_ms=api.video_sample_interval_ms,
    )
    # The same token with another request (another video, collection, purpose...) is a mismatch.
    stated = {key: value for key, value in request.items() if key != "ClientRequestToken"}
    fingerprint = request_fingerprint(
        kind, {**stated, "caller": [caller.identity, caller.purpose, caller.case_reference]}
    )
    return videos.start(job, token, fingerprint)


def _job_response(api: FaceApi, request: dict[str, Any], kind: JobKind) -> tuple[VideoJob, dict[str, Any]]:
    job = _videos(api).jobs.get(request["JobId"])
    if job is None:
        raise ResourceNotFoundError(f"no video job {request['JobId']!r} (results are kept for a limited time)")
    if job.kind is not kind:
        raise ResourceNotFoundError(f"job {job.job_id!r} is a {job.kind.value} job: ask Get{job.kind.value} for it")
    video: dict[str, Any] = {"Bucket": job.video.bucket, "Name": job.video.key}
    if job.video.version_id:
        video["Version"] = job.video.version_id
    response: dict[str, Any] = {"JobStatus": job.status.value, "JobId": job.job_id, "Video": {"S3Object": video}}
    if job.job_tag:
        response["JobTag"] = job.job_tag
    if job.status_message:
        response["StatusMessage"] = job.status_message
    if job.metadata:
        response["VideoMetadata"] = job.metadata
    if job.status is JobStatus.IN_PROGRESS and job.segments:
        # Candor's own (boto3 ignores it): how far the job is, for progress bars.
        response["Progress"] = {"SegmentsDone": len(job.segments_done), "Segments": job.segments}
    return job, response


def _results(api: FaceApi, job: VideoJob) -> Any:
    results = _videos(api).store.get_results(job.job_id)
    if results is None:
        raise ResourceNotFoundError(f"the results of job {job.job_id!r} have expired")
    return results


def _page(entries: list[dict[str, Any]], request: dict[str, Any], job: VideoJob, sort_by: str) -> tuple[list[Any], str]:
    limit = min(int(request.get("MaxResults", MAX_VIDEO_RESULTS_PAGE)), MAX_VIDEO_RESULTS_PAGE)
    offset = _offset(request["NextToken"], job.job_id, sort_by, len(entries)) if request.get("NextToken") else 0
    end = offset + limit
    token = _token(job.job_id, sort_by, end) if end < len(entries) else ""
    return entries[offset:end], token


def _token(job_id: str, sort_by: str, offset: int) -> str:
    return base64.urlsafe_b64encode(json.dumps({"job": job_id, "sort": sort_by, "offset": offset}).encode()).decode()


def _offset(token: str, job_id: str, sort_by: str, total: int) -> int:
    try:
        data = json.loads(base64.urlsafe_b64decode(token.encode()))
        offset = data["offset"]
        valid = data["job"] == job_id and data["sort"] == sort_by and isinstance(offset, int) and 0 < offset < total
    except (ValueError, TypeError, KeyError, binascii.Error):
        valid = False
    if not valid:
        raise InvalidPaginationTokenError("NextToken is not a token of this job's results with this SortBy")
    return int(offset)


def _face_detail(face: FaceSample, width: int, height: int) -> dict[str, Any]:
    left, top, box_width, box_height = face.box
    return {
        "BoundingBox": {
            "Width": box_width / width,
            "Height": box_height / height,
            "Left": left / width,
            "Top": top / height,
        },
        "Landmarks": [
            {"Type": name, "X": x / width, "Y": y / height}
            for name, (x, y) in zip(LANDMARK_TYPES, face.landmarks, strict=True)
        ],
        "Pose": face.pose,
        "Quality": face.quality,
        "Confidence": face.confidence * 100,
    }


def _person_match(face: FaceSample, width: int, height: int) -> dict[str, Any]:
    detail = _face_detail(face, width, height)
    return {
        "Timestamp": face.timestamp_ms,
        "Person": {"Index": face.person or 0, "BoundingBox": detail["BoundingBox"], "Face": detail},
        "FaceMatches": [
            {
                "Similarity": match["similarity"],
                "Face": {
                    "FaceId": match["face_id"],
                    **({"ImageId": match["photo_id"]} if match.get("photo_id") else {}),
                    **({"ExternalImageId": match["external_image_id"]} if match.get("external_image_id") else {}),
                },
            }
            for match in face.matches
        ],
    }


def _videos(api: FaceApi) -> VideoJobs:
    if api.videos is None:
        raise RuntimeError("this face API was built without video jobs (VIDEO_JOBS_TABLE)")
    return api.videos
