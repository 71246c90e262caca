"""`candor video`: the summaries of GetFaceSearch and GetFaceDetection pages, the annotated copy, the command
against a stand-in face API (boto3's real Rekognition client over HTTP), and the parser's errors.

Sample videos by Intel Corporation, CC BY 4.0 (../shared/data/video).
"""

from __future__ import annotations

import argparse
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import av
import boto3
import numpy as np
import pytest

from candor.core.enrolment import META_COLLECTION
from candor.video.jobs import META_CASE, META_PURPOSE, META_THRESHOLD, VIDEO_UPLOAD_PREFIX, upload_job_id
from candor_local.cli import connection, video
from candor_local.cli import main as candor_cli
from candor_local.cli.annotate import HOLD_INTERVALS, BoxSchedule, Sighting, annotate_video, sample_interval_ms
from candor_local.cli.client import CandorClient, StackEndpoints

ROOT = Path(__file__).resolve().parents[1]
VIDEOS = ROOT.parent / "shared" / "data" / "video"
SIGNING = VIDEOS / "book.mkv"  # 640x480, 30 fps, 109 frames, 3.6 s
BOX = {"Left": 0.30, "Top": 0.20, "Width": 0.30, "Height": 0.40}


def _entry(timestamp: int, index: int, *matches: tuple[str | None, float], box: dict | None = None) -> dict:
    """One GetFaceSearch Persons entry: a person at a sampled frame, with its matches (ExternalImageId, Similarity)."""
    face = {"BoundingBox": box or BOX, "Confidence": 99.5}
    return {
        "Timestamp": timestamp,
        "Person": {"Index": index, "BoundingBox": box or BOX, "Face": face},
        "FaceMatches": [
            {
                "Similarity": similarity,
                "Face": {"FaceId": f"face-{name}-{n}", **({"ExternalImageId": name} if name else {})},
            }
            for n, (name, similarity) in enumerate(matches)
        ],
    }


VIDEO_METADATA = {
    "Codec": "h264",
    "DurationMillis": 3600,
    "Format": "Matroska / WebM",
    "FrameRate": 30.0,
    "FrameHeight": 480,
    "FrameWidth": 640,
}


def _search_pages() -> list[dict[str, Any]]:
    """Two pages: person 0 is anna in most samples (once taken for bea), person 1 never matches, person 2
    is matched by FaceId only; person 1 appears first."""
    first = [
        _entry(0, 1),
        _entry(200, 0, ("anna", 91.0), ("bea", 85.0)),
        _entry(200, 1),
        _entry(400, 0, ("bea", 97.0)),
        _entry(600, 0, ("anna", 95.5)),
    ]
    second = [
        _entry(800, 0, ("anna", 93.0)),
        _entry(1000, 0),
        _entry(1000, 2, (None, 88.0)),
        _entry(1400, 1),
    ]
    return [
        {"JobStatus": "SUCCEEDED", "VideoMetadata": VIDEO_METADATA, "Persons": first, "NextToken": "2"},
        {"JobStatus": "SUCCEEDED", "VideoMetadata": VIDEO_METADATA, "Persons": second},
    ]


# --- summaries ------------------------------------------------------------------------------------------------


def test_persons_are_named_by_their_most_frequent_match_with_its_best_similarity() -> None:
    persons = video.summarise_persons(_search_pages())
    # In order of first appearance: person 1 (0 ms), person 0 (200 ms), person 2 (1000 ms).
    assert [p["index"] for p in persons] == [1, 0, 2]
    by_index = {p["index"]: p for p in persons}
    anna = by_index[0]
    # anna is the best match in 3 samples, bea in 1 (with the higher similarity 97): the most frequent wins,
    # with anna's own best similarity; the second match of a sample (bea 85) is no vote.
    assert (anna["name"], anna["similarity"], anna["matched_samples"]) == ("anna", 95.5, 3)
    assert (anna["first_seen_ms"], anna["last_seen_ms"], anna["samples"]) == (200, 1000, 5)
    unmatched = by_index[1]
    assert unmatched["name"] is None and unmatched["similarity"] is None and unmatched["matched_samples"] == 0
    assert (unmatched["first_seen_ms"], unmatched["last_seen_ms"], unmatched["samples"]) == (0, 1400, 3)
    # No ExternalImageId: the FaceId names them.
    assert by_index[2]["name"] == "face-None-0" and by_index[2]["samples"] == 1


def test_a_tie_between_names_goes_to_the_higher_similarity() -> None:
    page = {"Persons": [_entry(0, 0, ("anna", 90.0)), _entry(200, 0, ("bea", 92.0))]}
    [person] = video.summarise_persons([page])
    assert (person["name"], person["similarity"], person["matched_samples"]) == ("bea", 92.0, 1)


def test_no_persons_summarise_to_an_empty_list() -> None:
    assert video.summarise_persons([{"JobStatus": "SUCCEEDED", "Persons": []}]) == []


def _detection_pages() -> list[dict[str, Any]]:
    faces = [(0, 1), (200, 1), (400, 1), (1000, 2), (1200, 2), (2600, 1)]
    entries = [
        {"Timestamp": t, "Face": {"BoundingBox": {**BOX, "Left": 0.1 * n}, "Confidence": 99.0}}
        for t, count in faces
        for n in range(count)
    ]
    return [{"JobStatus": "SUCCEEDED", "VideoMetadata": VIDEO_METADATA, "Faces": entries}]


def test_detection_is_summarised_as_stretches_with_the_same_face_count() -> None:
    stretches = video.summarise_faces(_detection_pages(), duration_ms=3600)
    assert stretches == [
        {"start_ms": 0, "end_ms": 1000, "faces": 1},
        {"start_ms": 1000, "end_ms": 2000, "faces": 2},
        {"start_ms": 2000, "end_ms": 3000, "faces": 1},
        {"start_ms": 3000, "end_ms": 3600, "faces": 0},
    ]
    # Without the duration the stretches end a second after the last face.
    assert video.summarise_faces(_detection_pages())[-1] == {"start_ms": 2000, "end_ms": 3000, "faces": 1}
    assert video.summarise_faces([{"Faces": []}]) == []


def test_the_json_result_of_a_search_and_of_a_detection_and_of_a_failure() -> None:
    searched = video.video_result(video.VideoJob("job-1", "videos/x/v.mkv", "staff"), _search_pages())
    assert {"job_id", "status", "video", "persons"} <= searched.keys() and "faces" not in searched
    assert searched["video"] == VIDEO_METADATA and searched["status"] == "SUCCEEDED"
    assert set(searched["persons"][0]) >= {"index", "name", "similarity", "first_seen_ms", "last_seen_ms", "samples"}
    detected = video.video_result(video.VideoJob("job-2", "videos/y/v.mkv", None), _detection_pages())
    assert {"job_id", "status", "video", "faces", "face_counts"} <= detected.keys() and "persons" not in detected
    assert len(detected["faces"]) == 8 and detected["faces"][0] == {
        "timestamp_ms": 0,
        "bounding_box": {**BOX, "Left": 0.0},
        "confidence": 99.0,
    }
    failed = video.video_result(
        video.VideoJob("job-3", "videos/z/v.mkv", "staff"),
        [{"JobStatus": "FAILED", "StatusMessage": "InvalidVideo: not a video"}],
    )
    assert failed["status"] == "FAILED" and failed["status_message"] == "InvalidVideo: not a video"
    json.dumps([searched, detected, failed])  # plain JSON


def test_the_printed_summary_names_each_person_and_when_they_are_seen() -> None:
    result = video.video_result(video.VideoJob("job-1", "videos/x/v.mkv", "staff"), _search_pages())
    lines = video.format_result("v.mkv", result)
    assert lines[0] == "v.mkv (3.6 s, h264 640x480, 30 fps): 3 persons, searched in 'staff'"
    assert lines[1] == "  person 1: no match, seen 0.0-1.4 s, 3 samples"
    assert lines[2] == "  person 0: anna (similarity 95.5, 3 of 5 samples), seen 0.2-1.0 s, 5 samples"
    detected = video.video_result(video.VideoJob("job-2", "videos/y/v.mkv", None), _detection_pages())
    lines = video.format_result("v.mkv", detected)
    assert lines[0] == "v.mkv (3.6 s, h264 640x480, 30 fps): 8 faces in 6 samples, at most 2 in one (face detection)"
    assert lines[1:] == ["  0.0-1.0 s: 1 face", "  1.0-2.0 s: 2 faces", "  2.0-3.0 s: 1 face", "  3.0-3.6 s: no face"]


# --- the annotated copy ---------------------------------------------------------------------------------------


def test_boxes_are_held_until_the_next_sample_and_dropped_after_two_intervals() -> None:
    near, far = {**BOX, "Left": 0.1}, {**BOX, "Left": 0.5}
    sightings = [
        Sighting(0, near, "#0", 0),
        Sighting(200, far, "#0", 0),
        Sighting(1000, near, "#0", 0),
        Sighting(200, BOX, "#1", 1),
    ]
    interval = sample_interval_ms(s.timestamp_ms for s in sightings)
    assert interval == 200 and HOLD_INTERVALS == 2
    schedule = BoxSchedule(sightings, HOLD_INTERVALS * interval)
    assert [s.box for s in schedule.at(100)] == [near]  # person 1 is not seen yet
    assert sorted(s.label for s in schedule.at(250)) == ["#0", "#1"]
    assert [s.box for s in schedule.at(500) if s.track == 0] == [far]  # held: 300 ms after its sample
    assert schedule.at(601) == []  # neither seen for more than two intervals
    assert [s.box for s in schedule.at(1000)] == [near]
    # Faces of a detection job are held together, per sample.
    faces = BoxSchedule([Sighting(0, near), Sighting(0, far), Sighting(200, near)], 400)
    assert len(faces.at(100)) == 2 and len(faces.at(300)) == 1 and faces.at(700) == []


def _frames(path: Path) -> list[tuple[int, np.ndarray]]:
    """(ms from the first frame, RGB pixels) of every frame."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        origin, time_base = stream.start_time or 0, stream.time_base or 1
        return [
            (round(float(((frame.pts or 0) - origin) * time_base) * 1000), frame.to_ndarray(format="rgb24"))
            for frame in container.decode(stream)
        ]


def test_the_annotated_copy_has_every_frame_with_the_boxes_drawn(tmp_path: Path) -> None:
    # A person sampled every 200 ms for the first 1.8 s; after 2.2 s (two intervals) the box is gone.
    sightings = [Sighting(t, BOX, "#0 anna", 0) for t in range(0, 2000, 200)]
    written = annotate_video(SIGNING, tmp_path / "annotated.mp4", sightings)
    original, annotated = _frames(SIGNING), _frames(written.path)
    assert abs(len(annotated) - len(original)) <= 1 and written.frames == len(original)
    with av.open(str(written.path)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264"
        assert (stream.width, stream.height) == (640, 480) and stream.width % 2 == stream.height % 2 == 0
    # The box's top edge (row 0.2 * 480 = 96, across the box's width) on a frame inside the samples, and
    # on one after the hold.
    top, left, right = round(BOX["Top"] * 480), round(BOX["Left"] * 640) + 10, round(0.60 * 640) - 10
    timed = dict(annotated)
    for timestamp, pixels in original:
        drawn = timed[timestamp].astype(int)
        edge = np.abs(drawn[top - 1 : top + 2, left:right] - pixels[top - 1 : top + 2, left:right]).mean()
        background = np.abs(drawn[400:470, 20:120] - pixels[400:470, 20:120]).mean()
        assert background < 8, f"{timestamp} ms: the picture away from the box changed ({background:.1f})"
        if 100 <= timestamp <= 1800:
            assert edge > 40, f"{timestamp} ms: no box edge drawn ({edge:.1f})"
        elif timestamp > 2300:
            assert edge < 10, f"{timestamp} ms: a box is still drawn ({edge:.1f})"


def test_an_odd_sized_video_is_copied_at_even_size(tmp_path: Path) -> None:
    odd = tmp_path / "odd.mkv"
    with av.open(str(odd), mode="w") as target:
        stream = target.add_stream("libx264rgb", rate=10)
        stream.width, stream.height, stream.pix_fmt = 101, 75, "rgb24"
        for n in range(5):
            frame = av.VideoFrame.from_ndarray(np.full((75, 101, 3), 40 * n, dtype=np.uint8), format="rgb24")
            target.mux(stream.encode(frame))
        target.mux(stream.encode())
    written = annotate_video(odd, tmp_path / "even.mp4", [Sighting(0, BOX)])
    assert (written.width, written.height, written.frames) == (100, 74, 5)
    assert len(_frames(written.path)) == 5


# --- the command against a stand-in face API --------------------------------------------------------------------


class _FaceApi(BaseHTTPRequestHandler):
    """Answers GetFaceSearch / GetFaceDetection as the stack would: not recorded, in progress, then the pages."""

    script: ClassVar[list[dict[str, Any]]] = []
    requests: ClassVar[list[tuple[str, dict[str, Any]]]] = []
    pages: ClassVar[list[dict[str, Any]]] = []

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])) or b"{}")
        target = self.headers["X-Amz-Target"]
        self.requests.append((target, body))
        if target.endswith("DescribeCollection"):
            self._answer(200, {"FaceCount": 2, "FaceModelVersion": "sface"})
        elif body.get("MaxResults") == 1 and self.script:
            step = self.script.pop(0)
            self._answer(400 if "__type" in step else 200, step)
        else:
            page = self.pages[1] if body.get("NextToken") else self.pages[0]
            self._answer(200, page)

    def _answer(self, status: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/x-amz-json-1.1")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *_: Any) -> None:
        pass


class _Uploads:
    """The upload bucket: records what is put and answers with a version, as the versioned bucket does."""

    def __init__(self) -> None:
        self.puts: list[dict[str, Any]] = []

    def put_object(self, **request: Any) -> dict[str, Any]:
        self.puts.append({**request, "Body": request["Body"].read()})
        return {"ETag": '"x"', "VersionId": "version-1"}


@pytest.fixture
def face_api() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FaceApi)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _FaceApi.requests = []
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def _client(api_url: str) -> tuple[CandorClient, _Uploads]:
    """A CLI client whose face API is the stand-in and whose upload bucket records the uploads."""
    stack = StackEndpoints(endpoint_url=None, api_url=api_url, bucket="uploads", photos_table="photos")
    session = boto3.session.Session(aws_access_key_id="test", aws_secret_access_key="test", region_name="us-east-1")
    client = CandorClient(stack, session)
    uploads = _Uploads()
    client.s3 = uploads  # type: ignore[assignment]
    return client, uploads


def _args(**values: Any) -> argparse.Namespace:
    defaults = {
        "video": SIGNING,
        "collection": None,
        "purpose": None,
        "case": None,
        "threshold": None,
        "job_tag": None,
        "annotate": None,
        "timeout": 30.0,
        "json": True,
    }
    return argparse.Namespace(**{**defaults, **values})


def _progress(done: int, total: int) -> dict[str, Any]:
    return {"JobStatus": "IN_PROGRESS", "Progress": {"SegmentsDone": done, "Segments": total}}


def test_a_search_is_uploaded_waited_for_and_printed_as_json(
    face_api: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(video, "POLL_S", 0.01)
    _FaceApi.script = [
        {"__type": "ResourceNotFoundException", "Message": "no such job yet"},
        {"JobStatus": "IN_PROGRESS"},
        _progress(0, 2),
        _progress(1, 2),
        {"JobStatus": "SUCCEEDED", "VideoMetadata": VIDEO_METADATA, "Persons": [], "NextToken": "1"},
    ]
    _FaceApi.pages = _search_pages()
    client, uploads = _client(face_api)
    seen: list[dict] = []
    monkeypatch.setattr(video, "_show_progress", lambda _bar, progress: seen.append(progress))
    printed: list[str] = []
    args = _args(
        collection="staff", purpose="missing-persons", case="CASE-7", threshold=95.0, annotate=tmp_path / "out.mp4"
    )
    assert video.run_video(client, args, printed.append) == 0

    [put] = uploads.puts
    assert put["Bucket"] == "uploads" and put["Key"].startswith(VIDEO_UPLOAD_PREFIX)
    assert put["Key"].endswith("/book.mkv") and put["Body"] == SIGNING.read_bytes()
    assert put["Metadata"] == {
        META_COLLECTION: "staff",
        META_PURPOSE: "missing-persons",
        META_CASE: "CASE-7",
        META_THRESHOLD: "95",
    }
    job_id = upload_job_id("uploads", put["Key"], "version-1")
    # Progress, which boto3's model does not know, reaches the progress bar.
    assert seen == [{"SegmentsDone": 0, "Segments": 2}, {"SegmentsDone": 1, "Segments": 2}]
    gets = [body for target, body in _FaceApi.requests if target == "RekognitionService.GetFaceSearch"]
    assert all(body["JobId"] == job_id for body in gets)
    assert gets[-2:] == [
        {"JobId": job_id, "MaxResults": 1000, "SortBy": "TIMESTAMP"},
        {"JobId": job_id, "MaxResults": 1000, "SortBy": "TIMESTAMP", "NextToken": "2"},
    ]
    [line] = printed
    result = json.loads(line)
    assert result["job_id"] == job_id and result["status"] == "SUCCEEDED" and result["video"] == VIDEO_METADATA
    assert [p["name"] for p in result["persons"]] == [None, "anna", "face-None-0"]
    assert result["annotated"]["frames"] == 109 and (tmp_path / "out.mp4").is_file()


def test_a_detection_job_and_a_failed_job(face_api: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(video, "POLL_S", 0.01)
    _FaceApi.script = [{"JobStatus": "SUCCEEDED", "VideoMetadata": VIDEO_METADATA, "Faces": []}]
    _FaceApi.pages = _detection_pages()
    client, uploads = _client(face_api)
    printed: list[str] = []
    assert video.run_video(client, _args(json=False), printed.append) == 0
    assert uploads.puts[0]["Metadata"] == {}  # no collection: face detection only
    assert {target for target, _ in _FaceApi.requests} == {"RekognitionService.GetFaceDetection"}
    assert printed[0].startswith("book.mkv (3.6 s, h264 640x480, 30 fps): 8 faces in 6 samples")

    _FaceApi.script = [{"JobStatus": "FAILED", "StatusMessage": "InvalidVideo: the video is truncated"}]
    printed.clear()
    assert video.run_video(client, _args(json=False), printed.append) == 1
    assert printed == [
        f"book.mkv: job {upload_job_id('uploads', uploads.puts[-1]['Key'], 'version-1')} FAILED: "
        "InvalidVideo: the video is truncated"
    ]


def test_a_job_that_is_never_recorded_times_out_with_a_hint(face_api: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(video, "POLL_S", 0.01)
    monkeypatch.setattr(video, "RECORD_TIMEOUT_S", 0.05)
    _FaceApi.script = [{"__type": "ResourceNotFoundException", "Message": "no such job"}] * 1000
    with pytest.raises(TimeoutError, match=r"was not recorded .* VideoFunction"):
        video.run_video(_client(face_api)[0], _args())


# --- the parser -------------------------------------------------------------------------------------------------


def test_the_command_exists_and_says_what_is_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    parsed = candor_cli._parser().parse_args(["video", str(SIGNING), "--collection", "staff", "--json"])
    assert parsed.run is video.cmd_video and parsed.collection == "staff" and parsed.json
    assert candor_cli.main(["video", str(tmp_path / "missing.mp4")]) == 1
    assert capsys.readouterr().err.strip() == f"candor: {tmp_path / 'missing.mp4'} does not exist"
    # A file, but no stack: the same message as every other command's.
    monkeypatch.setattr(connection, "STATE_FILE", tmp_path / "up.json")
    monkeypatch.delenv("CANDOR_DEPLOYED_STACK", raising=False)
    assert candor_cli.main(["video", str(SIGNING)]) == 1
    assert "no running stack: start one with `candor up`" in capsys.readouterr().err


# --- end to end, through the local runtime -----------------------------------------------------------------------

FEMALE = VIDEOS / "head-pose-face-detection-female.gif"  # one person
TWO_PEOPLE = VIDEOS / "head-pose-face-detection-female-and-male.gif"  # the same woman, and a man


@pytest.fixture(scope="module")
def env(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from candor_local.emulator.runtime import LocalEnvironment

    logs = tmp_path_factory.mktemp("logs")
    with LocalEnvironment.start(stack_name="candor-video-cli", model_dir=model_dir, log_dir=logs) as environment:
        yield environment


@pytest.fixture
def cli(env: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """`candor` connected to the environment through the state file `candor up` writes."""
    from candor_local.cli.client import client_for

    state = tmp_path / "up.json"
    state.write_text(json.dumps(client_for(env).stack.__dict__))
    monkeypatch.setattr(connection, "STATE_FILE", state)
    for name in ("CANDOR_API", "AWS_ENDPOINT_URL", "CANDOR_PURPOSE", "CANDOR_CASE", "CANDOR_DEPLOYED_STACK"):
        monkeypatch.delenv(name, raising=False)
    return candor_cli.main


@pytest.mark.integration
def test_who_appears_when_in_a_video_from_the_command_line(
    cli: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Enrol three frames of the one-person clip (sample videos by Intel Corporation, CC BY 4.0) as person-a.
    enrol = tmp_path / "enrol" / "person-a"
    enrol.mkdir(parents=True)
    with av.open(str(FEMALE)) as container:
        for number, frame in enumerate(container.decode(video=0)):
            if number in (0, 8, 16):
                frame.to_image().save(enrol / f"frame{number}.png")
    assert cli(["enroll", str(enrol.parent), "--collection", "video-cli", "--consent", "FORM-1", "--json"]) == 0
    capsys.readouterr()

    annotated = tmp_path / "annotated.mp4"
    assert cli(["video", str(TWO_PEOPLE), "--collection", "video-cli", "--json", "--annotate", str(annotated)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["status"] == "SUCCEEDED" and result["video"]["FrameWidth"] == 480
    persons = result["persons"]
    assert len(persons) == 2, persons
    assert sorted(str(p["name"]) for p in persons) == ["None", "person-a"]
    for person in persons:
        # Both are in every sample of the 4.7 s clip.
        assert person["first_seen_ms"] <= 500 and person["last_seen_ms"] >= 4000 and person["samples"] >= 20
    named = next(p for p in persons if p["name"])
    assert named["similarity"] >= 80 and named["matched_samples"] >= 1
    assert result["annotated"]["frames"] == 56 and len(_frames(annotated)) == 56

    # Without a collection: face detection, two faces throughout.
    assert cli(["video", str(TWO_PEOPLE), "--json"]) == 0
    detected = json.loads(capsys.readouterr().out)
    assert detected["status"] == "SUCCEEDED" and "persons" not in detected
    assert [stretch["faces"] for stretch in detected["face_counts"]] == [2]

    # Not a video: the job FAILED, its message printed, exit status 1.
    fake = tmp_path / "not-a-video.mp4"
    fake.write_bytes(b"\x00\x00\x00\x18ftypmp42 but nothing after it")
    assert cli(["video", str(fake), "--collection", "video-cli"]) == 1
    out = capsys.readouterr().out
    assert "FAILED" in out and "not-a-video.mp4" in out
