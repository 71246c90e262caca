"""`candor video VIDEO`: who appears when in a stored video, through Rekognition Video's protocol.

The video is uploaded under videos/<unique>/<file name> of the upload bucket, which starts a job: a face
search in `--collection` (object metadata candor-collection, with the purpose and case it is searched for),
or face detection without one. The job's id is computed from the upload (candor/video/jobs.py), then
GetFaceSearch or GetFaceDetection is polled until the job ends, and its pages are summarised: per person
(Person.Index), the name matched most often with its best similarity, when they are first and last seen
and in how many samples; for detection, how many faces each stretch of the video shows.

The summaries and the annotated copy (`--annotate`, annotate.py) are plain functions of the API's pages,
so they run without a stack.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError
from tqdm import tqdm

from candor.accountability.policy import GENERAL_PURPOSE
from candor.core.enrolment import META_COLLECTION
from candor.video.jobs import META_CASE, META_JOB_TAG, META_PURPOSE, META_THRESHOLD, VIDEO_UPLOAD_PREFIX, upload_job_id
from candor_local.cli import annotate, connection
from candor_local.cli.client import CandorClient, CandorError
from candor_local.cli.face_api import SEARCH_THRESHOLD_HELP

FINAL_STATUSES = ("SUCCEEDED", "FAILED")
# Until the pipeline has recorded the job, Get* answers ResourceNotFoundException: wait this long for it.
RECORD_TIMEOUT_S = 60.0
POLL_S = 0.5
MAX_RESULTS = 1000  # Rekognition Video's largest page
# Face detection's summary counts faces per stretch of this length.
DETECTION_BUCKET_MS = 1000


def register(commands: argparse._SubParsersAction) -> None:
    """Add `candor video` to `candor`'s subcommands."""
    video = commands.add_parser(
        "video",
        help="who appears when in a video: face search in a collection, or face detection without one",
        description="Uploads the video to the stack's upload bucket under videos/, which starts a job: a face search "
        "in --collection (stating --purpose and --case as `candor search` does), or face detection without one. "
        "Waits for it, then prints who appears when: per person, the name matched most often with its best "
        "similarity, first and last seen and in how many samples; for detection, the faces per stretch of video. "
        "Exit status 1 when the job FAILED.",
    )
    video.add_argument("video", type=Path, help="a video file (MP4, MOV, MKV, WebM, GIF, ...)")
    video.add_argument("--collection", help="search the faces in this collection (default: detect faces only)")
    video.add_argument(
        "--purpose",
        default=os.environ.get("CANDOR_PURPOSE"),
        help=f"what the search is for, as the collection declares it ($CANDOR_PURPOSE; default {GENERAL_PURPOSE})",
    )
    video.add_argument(
        "--case",
        default=os.environ.get("CANDOR_CASE"),
        help="the case reference, required for every purpose but general ($CANDOR_CASE)",
    )
    video.add_argument("--threshold", type=float, help=SEARCH_THRESHOLD_HELP)
    video.add_argument("--job-tag", help="a tag recorded with the job (Rekognition's JobTag)")
    video.add_argument("--annotate", type=Path, metavar="OUT.mp4", help="write a copy with the faces boxed and named")
    video.add_argument("--timeout", type=float, default=3600, help="seconds to wait for the job (default 3600)")
    video.add_argument("--json", action="store_true", help="print one JSON object")
    video.set_defaults(run=cmd_video)


# --- the command ----------------------------------------------------------------------------------------------


def cmd_video(args: argparse.Namespace) -> int:
    if not args.video.is_file():
        raise FileNotFoundError(f"{args.video} {'is not a file' if args.video.exists() else 'does not exist'}")
    client = CandorClient(connection.connected_stack())
    client.state(purpose=args.purpose, case=args.case)
    try:
        return run_video(client, args)
    except ClientError as error:
        details = error.response.get("Error", {})
        raise CandorError(details.get("Code", "Error"), details.get("Message", "")) from error


def run_video(client: CandorClient, args: argparse.Namespace, write: Callable[[str], None] = print) -> int:
    """Upload, wait, summarise (and annotate); the exit status is 1 when the job FAILED."""
    if args.collection:
        # A missing collection is said now, not after the upload as a FAILED job.
        client.rekognition.describe_collection(CollectionId=args.collection)
    job = upload_video(client, args.video, args.collection, args.purpose, args.case, args.threshold, args.job_tag)
    if not args.json:
        kind = f"face search in '{args.collection}'" if args.collection else "face detection"
        print(f"uploaded {args.video.name} as {job.key}: {kind}, job {job.job_id}", file=sys.stderr)
    with tqdm(desc="waiting for the job", unit="segment", disable=args.json, file=sys.stderr) as bar:
        final = wait_for_job(client, job, args.timeout, on_progress=lambda p: _show_progress(bar, p))
    pages = result_pages(client, job) if final["JobStatus"] == "SUCCEEDED" else [final]
    result = video_result(job, pages)
    if args.annotate and result["status"] == "SUCCEEDED":
        written = annotate.annotate_video(args.video, args.annotate, sightings(job, pages))
        result["annotated"] = {"path": str(written.path), "frames": written.frames}
        if not args.json:
            print(f"wrote {written.path} ({written.frames} frames, {written.width}x{written.height})", file=sys.stderr)
    if args.json:
        write(json.dumps(result))
    else:
        for line in format_result(args.video.name, result):
            write(line)
    return 0 if result["status"] == "SUCCEEDED" else 1


def _show_progress(bar: tqdm, progress: dict[str, Any]) -> None:
    bar.set_description("analysing")
    if progress.get("Segments"):
        bar.total = int(progress["Segments"])
        bar.n = int(progress.get("SegmentsDone", 0))
    bar.refresh()


# --- talking to the stack ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class VideoJob:
    job_id: str
    key: str
    collection: str | None

    @property
    def searching(self) -> bool:
        return self.collection is not None


def upload_video(
    client: CandorClient,
    path: Path,
    collection: str | None = None,
    purpose: str | None = None,
    case: str | None = None,
    threshold: float | None = None,
    job_tag: str | None = None,
    key: str | None = None,
) -> VideoJob:
    """Upload the video under videos/<unique>/<name>; the upload starts the job, whose id follows from it."""
    key = key or f"{VIDEO_UPLOAD_PREFIX}{uuid.uuid4().hex[:12]}/{path.name}"
    values = {
        META_COLLECTION: collection,
        META_PURPOSE: purpose,
        META_CASE: case,
        META_THRESHOLD: None if threshold is None else f"{threshold:g}",
        META_JOB_TAG: job_tag,
    }
    metadata = {name: value for name, value in values.items() if value}
    with path.open("rb") as body:
        response = client.s3.put_object(Bucket=client.stack.bucket, Key=key, Body=body, Metadata=metadata)
    return VideoJob(upload_job_id(client.stack.bucket, key, response.get("VersionId")), key, collection)


def get_results(client: CandorClient, job: VideoJob, **request: Any) -> dict[str, Any]:
    """One GetFaceSearch or GetFaceDetection page, with Candor's Progress extension kept."""
    api: Any = client.rekognition  # read as the plain dicts the responses are
    _keep_progress(api)
    if job.searching:
        return api.get_face_search(JobId=job.job_id, **request)
    return api.get_face_detection(JobId=job.job_id, **request)


def wait_for_job(
    client: CandorClient,
    job: VideoJob,
    timeout_s: float = 3600.0,
    on_progress: Callable[[dict[str, Any]], None] | None = None,
    record_timeout_s: float | None = None,
    poll_s: float | None = None,
) -> dict[str, Any]:
    """Poll the job until it is SUCCEEDED or FAILED; returns that response (one result at most)."""
    record_timeout_s = RECORD_TIMEOUT_S if record_timeout_s is None else record_timeout_s
    poll_s = POLL_S if poll_s is None else poll_s
    started = time.monotonic()
    while True:
        elapsed = time.monotonic() - started
        try:
            response = get_results(client, job, MaxResults=1)
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") != "ResourceNotFoundException":
                raise
            if elapsed > record_timeout_s:
                raise TimeoutError(
                    f"job {job.job_id} of {job.key} was not recorded after {record_timeout_s:.0f} s: "
                    "does the stack run VideoFunction?"
                ) from error
        else:
            if on_progress and "Progress" in response:
                on_progress(response["Progress"])
            if response.get("JobStatus") in FINAL_STATUSES:
                return response
        if elapsed > timeout_s:
            raise TimeoutError(f"job {job.job_id} of {job.key} did not end after {timeout_s:.0f} s")
        time.sleep(poll_s)


def result_pages(client: CandorClient, job: VideoJob) -> list[dict[str, Any]]:
    """Every page of a SUCCEEDED job's results, in time order."""
    pages = []
    request: dict[str, Any] = {"MaxResults": MAX_RESULTS}
    if job.searching:
        request["SortBy"] = "TIMESTAMP"
    while True:
        page = get_results(client, job, **request)
        pages.append({k: v for k, v in page.items() if k != "ResponseMetadata"})
        if not page.get("NextToken"):
            return pages
        request["NextToken"] = page["NextToken"]


def _keep_progress(api: Any) -> None:
    """boto3 keeps only the members of Rekognition's model; Progress is Candor's, so it is read from the body."""
    if getattr(api, "_candor_keeps_progress", False):
        return
    for operation in ("GetFaceSearch", "GetFaceDetection"):
        api.meta.events.register(f"after-call.rekognition.{operation}", _add_progress)
    api._candor_keeps_progress = True


def _add_progress(http_response: Any, parsed: dict[str, Any], **_: Any) -> None:
    if http_response.status_code >= 300 or not isinstance(parsed, dict):
        return
    try:
        progress = json.loads(http_response.content or b"{}").get("Progress")
    except (ValueError, AttributeError):
        return
    if isinstance(progress, dict):
        parsed["Progress"] = progress


# --- the summaries: plain functions of the API's pages -------------------------------------------------------


def summarise_persons(pages: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each Person.Index of GetFaceSearch pages: the name (ExternalImageId, else FaceId) that is most often
    their best match, with the best similarity it had, in how many samples it was (`matched_samples`),
    when they were first and last seen, and in how many samples. People never matched have name None."""
    seen: dict[int, list[int]] = defaultdict(list)
    votes: dict[int, Counter[str]] = defaultdict(Counter)
    best: dict[tuple[int, str], float] = {}
    for page in pages:
        for entry in page.get("Persons", []):
            index = int(entry["Person"]["Index"])
            seen[index].append(int(entry["Timestamp"]))
            matches = entry.get("FaceMatches") or []
            if not matches:
                continue
            top = max(matches, key=lambda match: match["Similarity"])
            matched = _face_name(top["Face"])
            votes[index][matched] += 1
            best[index, matched] = max(best.get((index, matched), 0.0), float(top["Similarity"]))
    persons = []
    for index in sorted(seen, key=lambda i: (min(seen[i]), i)):
        name: str | None = None
        if votes[index]:
            # Most samples first; a tie goes to the higher similarity.
            name = max(votes[index], key=lambda n: (votes[index][n], best[index, n]))
        persons.append(
            {
                "index": index,
                "name": name,
                "similarity": None if name is None else round(best[index, name], 3),
                "matched_samples": 0 if name is None else votes[index][name],
                "first_seen_ms": min(seen[index]),
                "last_seen_ms": max(seen[index]),
                "samples": len(seen[index]),
            }
        )
    return persons


def summarise_faces(pages: Iterable[dict[str, Any]], duration_ms: int | None = None) -> list[dict[str, Any]]:
    """GetFaceDetection pages as stretches of the video with the same number of faces: each second counts the
    most faces any one of its samples shows (0 when none does); neighbouring seconds with the same count join.
    The last stretch ends at the video's end (`duration_ms`), or a second after the last face."""
    per_sample = Counter(int(face["Timestamp"]) for page in pages for face in page.get("Faces", []))
    if not per_sample and not duration_ms:
        return []
    end_ms = duration_ms or (max(per_sample) // DETECTION_BUCKET_MS + 1) * DETECTION_BUCKET_MS
    buckets = -(-end_ms // DETECTION_BUCKET_MS)
    counts = [0] * max(buckets, 1)
    for timestamp, count in per_sample.items():
        bucket = min(timestamp // DETECTION_BUCKET_MS, len(counts) - 1)
        counts[bucket] = max(counts[bucket], count)
    stretches: list[dict[str, Any]] = []
    for bucket, count in enumerate(counts):
        start = bucket * DETECTION_BUCKET_MS
        if stretches and stretches[-1]["faces"] == count:
            stretches[-1]["end_ms"] = min(start + DETECTION_BUCKET_MS, end_ms)
        else:
            stretches.append({"start_ms": start, "end_ms": min(start + DETECTION_BUCKET_MS, end_ms), "faces": count})
    return stretches


def video_result(job: VideoJob, pages: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """What `--json` prints: job_id, status, video (VideoMetadata), then persons (search) or faces and
    face_counts (detection); status_message when the job FAILED."""
    first = pages[0] if pages else {}
    video = first.get("VideoMetadata") or {}
    result: dict[str, Any] = {
        "job_id": job.job_id,
        "status": first.get("JobStatus"),
        "key": job.key,
        "collection": job.collection,
        "video": video,
    }
    if first.get("JobStatus") != "SUCCEEDED":
        result["status_message"] = first.get("StatusMessage") or "the job failed without a message"
        return result
    if job.searching:
        result["persons"] = summarise_persons(pages)
    else:
        result["faces"] = [
            {
                "timestamp_ms": int(face["Timestamp"]),
                "bounding_box": face["Face"]["BoundingBox"],
                "confidence": face["Face"].get("Confidence"),
            }
            for page in pages
            for face in page.get("Faces", [])
        ]
        result["face_counts"] = summarise_faces(pages, video.get("DurationMillis"))
    return result


def sightings(job: VideoJob, pages: Sequence[dict[str, Any]]) -> list[annotate.Sighting]:
    """The boxes to draw: each person's, labelled with their index and name (search); each face's (detection)."""
    if not job.searching:
        return [
            annotate.Sighting(int(face["Timestamp"]), face["Face"]["BoundingBox"])
            for page in pages
            for face in page.get("Faces", [])
        ]
    names = {person["index"]: person["name"] for person in summarise_persons(pages)}
    found = []
    for page in pages:
        for entry in page.get("Persons", []):
            person = entry["Person"]
            box = person.get("BoundingBox") or person.get("Face", {}).get("BoundingBox")
            if box is None:
                continue
            index = int(person["Index"])
            label = f"#{index} {names[index]}" if names.get(index) else f"#{index}"
            found.append(annotate.Sighting(int(entry["Timestamp"]), box, label, index))
    return found


def format_result(name: str, result: dict[str, Any]) -> list[str]:
    video = result.get("video") or {}
    if result["status"] != "SUCCEEDED":
        return [f"{name}: job {result['job_id']} {result['status']}: {result.get('status_message')}"]
    about = _about(name, video)
    if "persons" in result:
        persons = result["persons"]
        lines = [f"{about}: {_plural(len(persons), 'person')}, searched in '{result['collection']}'"]
        for person in persons:
            if person["name"] is None:
                who = "no match"
            else:
                who = (
                    f"{person['name']} (similarity {person['similarity']:.1f}, "
                    f"{person['matched_samples']} of {person['samples']} samples)"
                )
            seen = _span(person["first_seen_ms"], person["last_seen_ms"])
            lines.append(f"  person {person['index']}: {who}, seen {seen}, {_plural(person['samples'], 'sample')}")
        return lines
    faces = result["faces"]
    samples = Counter(face["timestamp_ms"] for face in faces)
    lines = [
        f"{about}: {_plural(len(faces), 'face')} in {_plural(len(samples), 'sample')}, "
        f"at most {max(samples.values(), default=0)} in one (face detection)"
    ]
    for stretch in result["face_counts"]:
        count = _plural(stretch["faces"], "face") if stretch["faces"] else "no face"
        lines.append(f"  {_span(stretch['start_ms'], stretch['end_ms'])}: {count}")
    return lines


def _about(name: str, video: dict[str, Any]) -> str:
    """The file's name with what the job read of it: `v.mkv (3.6 s, h264 640x480, 30 fps)`."""
    if not video:
        return name
    parts = [f"{video.get('Codec', '?')} {video.get('FrameWidth', '?')}x{video.get('FrameHeight', '?')}"]
    if video.get("FrameRate"):
        parts.append(f"{video['FrameRate']:g} fps")
    if video.get("DurationMillis"):
        parts.insert(0, _clock(video["DurationMillis"]))
    return f"{name} ({', '.join(parts)})"


def _face_name(face: dict[str, Any]) -> str:
    return face.get("ExternalImageId") or face.get("UserId") or face["FaceId"]


def _clock(ms: int) -> str:
    """12.4 s; 1:02.4 past a minute; 1:02:03 past an hour."""
    seconds = ms / 1000
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{int(minutes)}:{seconds:04.1f}"
    hours, minutes = divmod(int(minutes), 60)
    return f"{hours}:{minutes:02d}:{int(seconds):02d}"


def _span(start_ms: int, end_ms: int) -> str:
    """0.0-4.5 s, or 0:58.0-1:02.4 past a minute."""
    if end_ms < 60_000:
        return f"{start_ms / 1000:.1f}-{end_ms / 1000:.1f} s"
    return f"{_clock(start_ms)}-{_clock(end_ms)}"


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"
