"""`candor live`: the lines and summary it prints from a processor's records, how it reads a source, and the
command end to end through the local runtime on a real clip (sample video by Intel Corporation, CC BY 4.0).
"""

from __future__ import annotations

import argparse
import datetime
import io
import json
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import av
import pytest
from video_samples import ONE_PERSON

from candor_local.cli import connection, live
from candor_local.cli.client import CandorClient, StackEndpoints, client_for

STARTED = 1_700_000_000.0


def _record(at: float, *faces: dict[str, Any], dropped: int = 0, error: dict[str, str] | None = None) -> dict:
    """An output record of a frame captured `at` s after STARTED."""
    record: dict[str, Any] = {
        "InputInformation": {"KinesisVideo": {"ProducerTimestamp": STARTED + at, "FragmentNumber": "1"}},
        "StreamProcessorInformation": {"Status": "RUNNING"},
        "FaceSearchResponse": list(faces),
    }
    extension: dict[str, Any] = {}
    if dropped:
        extension["DroppedFrames"] = dropped
    if error:
        extension["Error"] = error
    if extension:
        record["CandorFrame"] = extension
    return record


def _face(index: int, *matches: tuple[str, float]) -> dict[str, Any]:
    return {
        "DetectedFace": {"BoundingBox": {"Left": 0.3, "Top": 0.2, "Width": 0.3, "Height": 0.4}},
        "MatchedFaces": [
            {"Similarity": similarity, "Face": {"FaceId": f"face-{name}", "ExternalImageId": name}}
            for name, similarity in matches
        ],
        "Person": {"Index": index},
    }


# --- the lines -----------------------------------------------------------------------------------------------


def test_a_matched_face_is_a_line_with_its_best_match_and_latency() -> None:
    seen: set[int] = set()
    record = _record(12.4, _face(0, ("visitor", 85.0), ("presenter", 97.12)))
    assert live.record_lines(record, STARTED, 180.4, seen) == [
        "12.4 s  person 0: presenter (similarity 97.1)  latency 180 ms"
    ]
    assert seen == {0}


def test_an_unmatched_person_is_said_once_a_matched_one_every_frame() -> None:
    seen: set[int] = set()
    first = live.record_lines(_record(0.0, _face(0), _face(1, ("anna", 91.0))), STARTED, 150, seen)
    again = live.record_lines(_record(0.2, _face(0), _face(1, ("anna", 92.0))), STARTED, 160, seen)
    assert first == [
        "0.0 s  person 0: no match  latency 150 ms",
        "0.0 s  person 1: anna (similarity 91.0)  latency 150 ms",
    ]
    assert again == ["0.2 s  person 1: anna (similarity 92.0)  latency 160 ms"]


def test_dropped_and_refused_frames_have_lines_of_their_own() -> None:
    refused = {"Code": "InvalidImageFormatException", "Message": "not an image"}
    lines = live.record_lines(_record(3.0, dropped=2, error=refused), STARTED, 90, set())
    assert lines == [
        "3.0 s  2 frames dropped: analysed too late",
        "3.0 s  frame refused: InvalidImageFormatException: not an image",
    ]
    assert live.record_lines(_record(3.2, dropped=1), STARTED, 90, set()) == [
        "3.2 s  1 frame dropped: analysed too late"
    ]


# --- the summary ---------------------------------------------------------------------------------------------


def test_the_summary_counts_records_drops_bad_frames_persons_and_latency() -> None:
    summary = live.LiveSummary(frames_sent=6)
    records = [
        (_record(0.0, _face(0, ("anna", 95.0))), 100.0),
        (_record(0.2, _face(0, ("anna", 96.0)), _face(1)), 200.0),
        (_record(0.8, _face(1), dropped=2), 300.0),
        (_record(1.0, error={"Code": "InvalidImageFormatException", "Message": "x"}), 400.0),
    ]
    for record, latency in records:
        summary.add(record, STARTED, latency)
    assert (summary.records, summary.dropped, summary.bad) == (4, 2, 1)
    assert summary.persons == {0, 1} and summary.matched == {0: "anna"}
    assert [round(at, 1) for at, _ in summary.latencies] == [0.0, 0.2, 0.8, 1.0]
    (line,) = live.summary_lines(summary)
    assert line == ("frames sent 6, records 4 (bad 1), dropped 2, persons 2 (0: anna); latency p50 250 ms, p99 397 ms")


def test_records_are_read_with_when_they_reached_the_stream_and_both_latencies_kept() -> None:
    arrived = datetime.datetime(2026, 12, 6, 12, 0, 0, 250000, tzinfo=datetime.UTC)
    record = _record(0.0, _face(0, ("anna", 95.0)))

    class Shard:
        def get_records(self, ShardIterator: str) -> dict[str, Any]:
            data = json.dumps(record).encode()
            return {"Records": [{"Data": data, "ApproximateArrivalTimestamp": arrived}], "NextShardIterator": "next"}

    iterators = {"shard-0": "first"}
    ((read, arrival),) = live.read_records(Shard(), iterators)
    assert read == record and arrival == arrived.timestamp() and iterators == {"shard-0": "next"}
    summary = live.LiveSummary(frames_sent=1)
    summary.add(read, STARTED, 320.0, 250.0)
    assert summary.latencies == [(0.0, 320.0)] and summary.written == [(0.0, 250.0)]


def test_a_summary_without_records_says_so_and_a_failure_is_said() -> None:
    summary = live.LiveSummary(frames_sent=3, interrupted=True, failure="the face search was refused: quota")
    assert live.summary_lines(summary) == [
        "frames sent 3, records 0 (bad 0), dropped 0, persons 0; latency no records",
        "interrupted: records still on their way were not read",
        "the stream processor FAILED: the face search was refused: quota",
    ]


def test_percentiles_interpolate_between_ranks() -> None:
    assert live.percentile([], 50) is None
    assert live.percentile([5.0], 99) == 5.0
    assert live.percentile([4.0, 1.0, 3.0, 2.0], 50) == 2.5
    assert live.percentile(range(101), 99) == 99.0


# --- the source ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "kind"),
    [
        ("clip.mp4", live.SourceKind.FILE),
        ("/tmp/videos/door.mkv", live.SourceKind.FILE),
        ("/dev/video0", live.SourceKind.CAMERA),
        ("camera:2", live.SourceKind.CAMERA),
        ("rtsp://10.0.0.5:554/stream1", live.SourceKind.URL),
        ("RTMP://example.org/live/key", live.SourceKind.URL),
        ("https://example.org/cam.m3u8", live.SourceKind.URL),
    ],
)
def test_a_source_is_a_file_a_camera_or_a_url(source: str, kind: live.SourceKind) -> None:
    assert live.source_kind(source) is kind


def test_a_camera_number_names_its_device() -> None:
    assert live.camera_device("camera:0") == "/dev/video0"
    assert live.camera_device("/dev/video3") == "/dev/video3"
    with pytest.raises(ValueError, match="camera:<number>"):
        live.camera_device("camera:front")


def test_frames_are_sampled_at_the_rate_asked_counted_from_the_first() -> None:
    at_25_fps = [(10.0 + n / 25, n) for n in range(50)]  # 2 s of video starting at 10 s
    sampled = list(live.sample_frames(at_25_fps, fps=5))
    assert [frame for _, frame in sampled] == [0, 5, 10, 15, 20, 25, 30, 35, 40, 45]
    assert [round(at, 2) for at, _ in sampled][:3] == [0.0, 0.2, 0.4]


def test_after_a_gap_sampling_starts_again_without_a_burst() -> None:
    times = [0.0, 0.1, 0.2, 2.0, 2.1, 2.2, 2.3, 2.4]  # 1.8 s with no frames
    assert [at for at, _ in live.sample_frames([(t, None) for t in times], fps=5)] == [0.0, 0.2, 2.0, 2.2, 2.4]


def test_a_file_is_sent_at_its_own_pace_and_replayed_with_loop() -> None:
    with av.open(str(ONE_PERSON)) as video:
        length = max(float(frame.time or 0) for frame in video.decode(video=0))
    once = list(live.source_frames(str(ONE_PERSON), fps=5))
    assert len(once) == int(length * 5) + 1
    assert all(image[:2] == b"\xff\xd8" for _, image in once), "JPEG"
    looped = live.source_frames(str(ONE_PERSON), fps=5, loop=True)
    due = [next(looped)[0] for _ in range(len(once) * 2 + 1)]
    assert due == sorted(due) and due[len(once)] > due[len(once) - 1], "the replay goes on in time"


def test_a_missing_file_is_said_before_anything_is_made(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        live.source_frames(str(tmp_path / "nothing.mp4"), fps=5)


# --- the stack -----------------------------------------------------------------------------------------------


def test_a_stack_without_a_frame_stream_is_refused_clearly() -> None:
    stack = StackEndpoints(
        endpoint_url="http://127.0.0.1:1", api_url="http://127.0.0.1:2/", bucket="b", photos_table="p"
    )
    args = _args(str(ONE_PERSON), "staff")
    with pytest.raises(ValueError, match="LiveFrameStream"):
        live.run_live(CandorClient(stack), args)


def test_a_state_file_from_before_live_streams_still_loads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    state = tmp_path / "up.json"
    state.write_text(json.dumps({"endpoint_url": "http://127.0.0.1:1", "api_url": "http://a/", "bucket": "b",
                                 "photos_table": "p", "region": "us-east-1"}))  # fmt: skip
    monkeypatch.setattr(connection, "STATE_FILE", state)
    for name in ("CANDOR_DEPLOYED_STACK", "CANDOR_API", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    assert connection.connected_stack().live_frame_stream is None


def _args(source: str, collection: str, **options: Any) -> argparse.Namespace:
    defaults: dict[str, Any] = {
        "fps": live.DEFAULT_FPS,
        "loop": False,
        "duration": None,
        "name": None,
        "threshold": None,
        "role_arn": None,
        "purpose": None,
        "case": None,
        "keep": False,
        "json": False,
    }
    return argparse.Namespace(source=source, collection=collection, **{**defaults, **options})


# --- end to end ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def env(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from candor_local.emulator.runtime import LocalEnvironment

    with LocalEnvironment.start(
        stack_name="candor-live-cli", model_dir=model_dir, log_dir=tmp_path_factory.mktemp("logs")
    ) as environment:
        yield environment


@pytest.mark.integration
def test_candor_live_names_the_presenter_as_her_clip_plays(env: Any, capsys: pytest.CaptureFixture[str]) -> None:
    client = client_for(env)
    collection = f"staff-{uuid.uuid4().hex[:8]}"
    client.rekognition.create_collection(CollectionId=collection)
    with av.open(str(ONE_PERSON)) as video:
        first = next(iter(video.decode(video=0))).to_image()
    buffer = io.BytesIO()
    first.save(buffer, format="JPEG", quality=90)
    client.state(consent="consent-form-live-cli-tests")
    indexed = client.rekognition.index_faces(
        CollectionId=collection, Image={"Bytes": buffer.getvalue()}, ExternalImageId="presenter", MaxFaces=1
    )
    assert len(indexed["FaceRecords"]) == 1
    client.state()
    printed: list[str] = []
    name = f"door-{uuid.uuid4().hex[:6]}"

    assert live.run_live(client, _args(str(ONE_PERSON), collection, name=name, threshold=80), printed.append) == 0

    line = re.compile(r"\d+\.\d s  person 0: (presenter \(similarity \d+\.\d\)|no match)  latency \d+ ms")
    assert all(line.fullmatch(printed_line) for printed_line in printed), printed
    assert [printed_line for printed_line in printed if "presenter" in printed_line], "her matches, as they came"
    assert len([printed_line for printed_line in printed if "no match" in printed_line]) <= 1, "said once at most"
    summary = capsys.readouterr().err.strip().splitlines()[-1]
    counts = re.match(
        r"frames sent (\d+), records (\d+) \(bad (\d+)\), dropped (\d+), persons 1 \(0: presenter\)", summary
    )
    assert counts is not None, summary
    sent, records, bad, dropped = (int(n) for n in counts.groups())
    assert sent == len(list(live.source_frames(str(ONE_PERSON), fps=5)))
    assert records + dropped == sent and bad == 0
    processors = client.rekognition.list_stream_processors()["StreamProcessors"]
    assert name not in {p["Name"] for p in processors}, "deleted after the run"
    streams = env.client("kinesis").list_streams()["StreamNames"]
    assert f"{live.OUTPUT_STREAM_PREFIX}{name}" not in streams
