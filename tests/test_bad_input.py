"""Every kind of bad input through the real pipeline, in one run: the corpus is generated here (no binaries in
the repository), uploaded all at once next to good photos and malformed events so that they share batches,
and each upload must end as the README's Reliability section says: processed with the right faces, or a
FAILED record with a reason code and a clear message. Nothing may reach a dead-letter queue.
"""

from __future__ import annotations

import io
import json
import os
import signal
import struct
import tracemalloc
import zlib
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from candor.core.enrolment import photo_id_for
from candor.core.errors import ImageTooLargeError
from candor.core.settings import MAX_FACES, MAX_OBJECT_IMAGE_BYTES
from candor.vision.images import decode_image
from candor_local.emulator.runtime import LocalEnvironment

pytestmark = pytest.mark.integration


@dataclass(frozen=True)
class Case:
    key: str
    data: bytes
    faces: int | None = None  # processed with this many faces
    error_code: str | None = None  # or FAILED with this code
    message: str | None = None  # ... and a message saying so


def encode(image: Image.Image, format: str, **options: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format, **options)
    return buffer.getvalue()


def png_header(width: int, height: int) -> bytes:
    """A PNG that claims width x height pixels but holds almost no data (a decompression bomb's shape)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    data = chunk(b"IDAT", zlib.compress(b"\x00" * 64))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + data + chunk(b"IEND", b"")


def face_grid(faces_dir: Path, models: Any, side: int = 11, cell: int = 96) -> bytes:
    """side x side real faces (crops of the enrolment photos, repeated) tiled into one JPEG."""
    detector = models[0]
    crops = []
    for path in sorted((faces_dir / "enroll").glob("*/*")):
        image = Image.open(path).convert("RGB")
        found = detector.detect(np.asarray(image), max_faces=1)
        if not found:
            continue
        box = found[0].bounding_box
        half = max(box.width, box.height) * 0.9
        cx, cy = box.left + box.width / 2, box.top + box.height / 2
        crops.append(image.crop((int(cx - half), int(cy - half), int(cx + half), int(cy + half))).resize((cell, cell)))
    grid = Image.new("RGB", (side * cell, side * cell))
    for i in range(side * side):
        grid.paste(crops[i % len(crops)], ((i % side) * cell, (i // side) * cell))
    return encode(grid, "JPEG", quality=90)


def corpus(faces_dir: Path, models: Any) -> list[Case]:
    obama = Image.open(faces_dir / "enroll/obama/obama.jpg").convert("RGB")
    obama_jpeg = (faces_dir / "enroll/obama/obama.jpg").read_bytes()
    noise = np.random.default_rng(6).integers(0, 256, 64 * 1024, dtype=np.uint8).tobytes()
    rgba = obama.convert("RGBA")
    rgba.putalpha(Image.new("L", obama.size, 255))
    # Stored turned on its side with EXIF orientation 6 ("rotate 90 clockwise to view"): upright, it is obama.jpg.
    sideways = obama.transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    blank = Image.new("RGB", (400, 300), (120, 140, 160))
    animation = encode(
        obama.convert("P"), "GIF", save_all=True, append_images=[blank.convert("P")], duration=100, loop=0
    )
    sixteen_bit = Image.fromarray(np.asarray(obama.convert("L"), dtype=np.uint16) * 257)  # I;16
    oversized = b"\xff\xd8\xff\xe0" + bytes(MAX_OBJECT_IMAGE_BYTES)  # one JPEG marker, then 15 MB of nothing
    return [
        Case("bad/empty.jpg", b"", error_code="InvalidImageFormat", message="empty"),
        Case("bad/noise.jpg", noise, error_code="InvalidImageFormat", message="not an image"),
        Case("bad/notes.txt", b"Meeting notes: no photos today.\n" * 20, error_code="InvalidImageFormat"),
        Case("bad/truncated.jpg", obama_jpeg[: len(obama_jpeg) // 2], error_code="InvalidImageFormat", message="trunc"),
        Case("bad/bomb.png", png_header(50_000, 50_000), error_code="ImageTooLarge", message="too many pixels"),
        Case("bad/tiny.png", encode(Image.new("RGB", (10, 10), "white"), "PNG"), error_code="ImageTooSmall"),
        Case("bad/oversized.jpg", oversized, error_code="ImageTooLarge", message="limit"),
        Case("formats/16-bit.png", encode(sixteen_bit, "PNG"), faces=1),
        Case("formats/cmyk.jpg", encode(obama.convert("CMYK"), "JPEG", quality=90), faces=1),
        Case("formats/grayscale.jpg", encode(obama.convert("L"), "JPEG", quality=90), faces=1),
        Case("formats/rgba.png", encode(rgba, "PNG"), faces=1),
        Case("formats/animated.gif", animation, faces=1),
        Case("formats/photo.webp", encode(obama, "WEBP", quality=85), faces=1),
        Case("formats/upright.jpg", obama_jpeg, faces=1),
        Case("formats/exif-rotated.jpg", encode(sideways, "JPEG", quality=90, exif=exif), faces=1),
        Case("formats/no-face.png", encode(blank, "PNG"), faces=0),
        Case("crowd/121-faces.jpg", face_grid(faces_dir, models), faces=MAX_FACES),
        Case("keys/with space.jpg", obama_jpeg, faces=1),
        Case("keys/ünïcødé 顔.jpg", obama_jpeg, faces=1),
        Case("keys/a+b.jpg", obama_jpeg, faces=1),
        Case("keys/100%.jpg", obama_jpeg, faces=1),
        Case("keys/%2F%20encoded.jpg", obama_jpeg, faces=1),
        Case("keys/../escape.jpg", obama_jpeg, faces=1),
    ]


# Sent straight to the detect queue, between the uploads' notifications.
MALFORMED_EVENTS = {
    "not JSON": "this is not JSON",
    "a JSON list": "[1, 2, 3]",
    "no Records": "{}",
    "Records not a list": '{"Records": "s3"}',
    "test event": json.dumps({"Service": "Amazon S3", "Event": "s3:TestEvent", "Bucket": "candor"}),
    "no event name": json.dumps({"Records": [{"s3": {"bucket": {"name": "b"}, "object": {"key": "k.jpg"}}}]}),
    "unknown event type": json.dumps(
        {"Records": [{"eventName": "ObjectRestore:Completed", "s3": {"bucket": {"name": "b"}, "object": {"key": "k"}}}]}
    ),
    "delete event": json.dumps(
        {"Records": [{"eventName": "ObjectRemoved:Delete", "s3": {"bucket": {"name": "b"}, "object": {"key": "k"}}}]}
    ),
    "no object key": json.dumps({"Records": [{"eventName": "ObjectCreated:Put", "s3": {"bucket": {"name": "b"}}}]}),
    "record not an object": json.dumps({"Records": ["ObjectCreated:Put"]}),
}


@pytest.fixture(scope="module")
def env(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalEnvironment]:
    logs = tmp_path_factory.mktemp("logs")
    with LocalEnvironment.start(stack_name="candor-bad", model_dir=model_dir, log_dir=logs) as environment:
        yield environment


@pytest.fixture(scope="module")
def run(env: LocalEnvironment, faces_dir: Path, models: Any) -> dict[str, Any]:
    """Upload the whole corpus and send the malformed events, interleaved; wait until the pipeline is idle."""
    cases = corpus(faces_dir, models)
    s3, sqs = env.client("s3"), env.client("sqs")
    bucket = env.resources["UploadBucket"]
    events = list(MALFORMED_EVENTS.items())
    message_ids = {}
    # DetectFunction (every instance) is paused while everything arrives, so that its batches are full (10)
    # and mixed.
    detect = env.worker_pids("DetectFunction")
    assert None not in detect
    for pid in detect:
        os.kill(pid, signal.SIGSTOP)  # type: ignore[arg-type]
    try:
        for i, case in enumerate(cases):
            s3.put_object(Bucket=bucket, Key=case.key, Body=case.data)
            if i % 2 and events:
                name, body = events.pop()
                sent = sqs.send_message(QueueUrl=env.resources["DetectQueue"], MessageBody=body)
                message_ids[name] = sent["MessageId"]
    finally:
        for pid in detect:
            os.kill(pid, signal.SIGCONT)  # type: ignore[arg-type]
    env.wait_idle(timeout=240)
    table = env.session.resource("dynamodb", endpoint_url=env.endpoint_url).Table(env.resources["PhotosTable"])
    records = {}
    for case in cases:
        item = table.get_item(Key={"photo_id": photo_id_for(bucket, case.key)}, ConsistentRead=True).get("Item")
        records[case.key] = item
    return {"cases": cases, "records": records, "malformed": message_ids}


def _log_entries(env: LocalEnvironment, function: str) -> list[dict[str, Any]]:
    lines = env.log_path(function).read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.startswith("{")]


def test_every_upload_ends_as_stated(run: dict[str, Any]) -> None:
    wrong = []
    for case in run["cases"]:
        record = run["records"][case.key]
        if record is None:
            wrong.append(f"{case.key}: no photo record")
        elif case.error_code is not None:
            message = str(record.get("error_message", ""))
            if (record["status"], record.get("error_code")) != ("FAILED", case.error_code) or not message:
                wrong.append(f"{case.key}: {record['status']} {record.get('error_code')} {message!r}")
            elif case.message and case.message not in message:
                wrong.append(f"{case.key}: message {message!r} does not say {case.message!r}")
        elif (record["status"], int(record["face_count"])) != ("COMPLETE", case.faces):
            faces, error = record["face_count"], record.get("error_message")
            wrong.append(f"{case.key}: {record['status']} with {faces} faces, {error}")
    assert not wrong, "\n".join(wrong)


def test_keys_are_recorded_exactly_as_uploaded(run: dict[str, Any]) -> None:
    for case in run["cases"]:
        if case.key.startswith("keys/"):
            assert run["records"][case.key]["key"] == case.key


def test_an_exif_rotated_photo_has_its_box_in_upright_coordinates(run: dict[str, Any]) -> None:
    upright, rotated = run["records"]["formats/upright.jpg"], run["records"]["formats/exif-rotated.jpg"]
    assert (rotated["image_width"], rotated["image_height"]) == (upright["image_width"], upright["image_height"])
    box, expected = rotated["faces"][0]["bounding_box"], upright["faces"][0]["bounding_box"]
    for side in ("left", "top", "width", "height"):
        assert abs(float(box[side]) - float(expected[side])) < 0.03 * int(upright["image_width"]), side


def test_a_crowd_keeps_the_100_largest_faces_and_says_the_rest_were_left_out(
    run: dict[str, Any], env: LocalEnvironment
) -> None:
    crowd = run["records"]["crowd/121-faces.jpg"]
    assert int(crowd["face_count"]) == MAX_FACES and crowd["faces_truncated"] is True
    assert run["records"]["formats/upright.jpg"].get("faces_truncated") is False
    faces = env.session.resource("dynamodb", endpoint_url=env.endpoint_url).Table(env.resources["FacesTable"])
    stored = faces.scan(
        FilterExpression="photo_id = :p", ExpressionAttributeValues={":p": crowd["photo_id"]}, Select="COUNT"
    )
    assert stored["Count"] == MAX_FACES


def test_malformed_events_are_logged_and_consumed(run: dict[str, Any], env: LocalEnvironment) -> None:
    logged = {e.get("message_id") for e in _log_entries(env, "DetectFunction") if e.get("message") == "malformed event"}
    sent = run["malformed"]
    # The S3 test event names no photo: it is consumed without a complaint.
    assert {name for name, message_id in sent.items() if message_id in logged} == set(sent) - {"test event"}


def test_nothing_reaches_a_dead_letter_queue(run: dict[str, Any], env: LocalEnvironment) -> None:
    sqs = env.client("sqs")
    for queue in ("DetectDeadLetterQueue", "EmbedDeadLetterQueue"):
        attributes = sqs.get_queue_attributes(QueueUrl=env.resources[queue], AttributeNames=["All"])["Attributes"]
        assert attributes["ApproximateNumberOfMessages"] == "0", queue


def test_bad_uploads_shared_batches_with_good_ones(run: dict[str, Any], env: LocalEnvironment) -> None:
    """At least one invocation of DetectFunction both failed a photo and found faces in another."""
    outcomes: dict[str, set[str]] = defaultdict(set)
    for entry in _log_entries(env, "DetectFunction"):
        outcomes[entry.get("function_request_id", "")].add(entry.get("message", ""))
    assert any({"photo failed", "faces detected"} <= seen for seen in outcomes.values())


def test_a_decompression_bomb_is_refused_without_allocating_its_pixels() -> None:
    bomb = png_header(50_000, 50_000)  # 7.5 GB of RGB if it were decoded
    tracemalloc.start()
    try:
        with pytest.raises(ImageTooLargeError, match="pixels"):
            decode_image(bomb, MAX_OBJECT_IMAGE_BYTES)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1024 * 1024
