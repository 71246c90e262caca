"""Duplicates, crashes, retries and dead letters, through the real functions in the local runtime.

The deployed queues get short visibility timeouts (the template's are 6 x the function timeouts, minutes),
so that a killed batch comes back, and a poison message reaches its dead-letter queue, within seconds.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import quote_plus

import pytest
from botocore.exceptions import ClientError

from candor.adapters.aws import DynamoPhotoRepository
from candor.core.enrolment import photo_id_for
from candor_local.cli.dlq import DeadLetters
from candor_local.emulator.runtime import LocalEnvironment

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]
# Long enough for a batch under load (a batch still in flight when it expires is received again).
DETECT_VISIBILITY_S = 10
EMBED_VISIBILITY_S = 10
# Enrolment uploads carry the enrolled person's consent reference; without it nobody is indexed.
CONSENTED = {"candor-consent": "consent-form-reliability"}
POISON = json.dumps(
    {
        "Records": [
            {"eventName": "ObjectCreated:Put", "s3": {"bucket": {"name": "Not A Bucket"}, "object": {"key": "x.jpg"}}}
        ]
    }
)


@pytest.fixture(scope="module")
def env(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalEnvironment]:
    logs = tmp_path_factory.mktemp("logs")
    with LocalEnvironment.start(stack_name="candor-rel", model_dir=model_dir, log_dir=logs) as environment:
        sqs = environment.client("sqs")
        for queue, seconds in (("DetectQueue", DETECT_VISIBILITY_S), ("EmbedQueue", EMBED_VISIBILITY_S)):
            sqs.set_queue_attributes(
                QueueUrl=environment.resources[queue], Attributes={"VisibilityTimeout": str(seconds)}
            )
        # moto fixes a message's visibility when a receive starts: let the workers' long polls begun before
        # the change (1 s each) end first.
        time.sleep(2.5)
        # A message no retry can fix (S3 refuses the bucket name): it dead-letters while the other tests run.
        sqs.send_message(QueueUrl=environment.resources["DetectQueue"], MessageBody=POISON)
        yield environment


def _rekognition(env: LocalEnvironment) -> Any:
    return env.session.client("rekognition", endpoint_url=env.api_url)


def _table(env: LocalEnvironment, name: str) -> Any:
    return env.session.resource("dynamodb", endpoint_url=env.endpoint_url).Table(env.resources[name])


def _photo(env: LocalEnvironment, key: str) -> dict[str, Any]:
    item = _table(env, "PhotosTable").get_item(
        Key={"photo_id": photo_id_for(env.resources["UploadBucket"], key)}, ConsistentRead=True
    )
    return dict(item.get("Item") or {})


def _faces_of(env: LocalEnvironment, photo_id: str) -> list[dict[str, Any]]:
    table, items, params = _table(env, "FacesTable"), [], {}
    while True:
        page = table.scan(FilterExpression="photo_id = :p", ExpressionAttributeValues={":p": photo_id}, **params)
        items.extend(page["Items"])
        if "LastEvaluatedKey" not in page:
            return items
        params = {"ExclusiveStartKey": page["LastEvaluatedKey"]}


def _collection_faces(env: LocalEnvironment, collection: str) -> list[dict[str, Any]]:
    return list(
        _table(env, "FacesTable").query(
            IndexName="ByCollection",
            KeyConditionExpression="collection_id = :c",
            ExpressionAttributeValues={":c": collection},
        )["Items"]
    )


def _log_entries(env: LocalEnvironment, function: str) -> list[dict[str, Any]]:
    return _json_lines(env.log_path(function).read_text(encoding="utf-8"))


def _json_lines(text: str) -> list[dict[str, Any]]:
    entries = []
    for line in text.splitlines():
        if not line.startswith("{"):
            continue
        # raw_decode: a SIGKILLed worker's last line has no newline, so the next instance's log may follow it
        # on the same line; a line cut short mid-object is skipped.
        try:
            entries.append(json.JSONDecoder().raw_decode(line)[0])
        except json.JSONDecodeError:
            continue
    return entries


def _count(env: LocalEnvironment, queue: str, in_flight: bool = False) -> int:
    names = ["ApproximateNumberOfMessages", *(["ApproximateNumberOfMessagesNotVisible"] if in_flight else [])]
    attributes = env.client("sqs").get_queue_attributes(QueueUrl=env.resources[queue], AttributeNames=names)
    return sum(int(attributes["Attributes"][name]) for name in names)


def _wait_for(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not after {timeout:.0f} s")
        time.sleep(0.2)


def _wait_for_photos(env: LocalEnvironment, keys: list[str], timeout: float = 90) -> None:
    _wait_for(lambda: all(_photo(env, k).get("status") in ("COMPLETE", "FAILED") for k in keys), timeout, "photos")
    # ... and for the embed stage's last writes after the photo record (the collection's index version).
    _wait_for(lambda: _count(env, "EmbedQueue", in_flight=True) == 0, timeout, "embed queue")


def _embedded(env: LocalEnvironment) -> Counter[str]:
    """How often EmbedFunction finished each key."""
    return Counter(e["key"] for e in _log_entries(env, "EmbedFunction") if e.get("message") == "faces embedded")


def test_the_same_event_twice_and_the_same_upload_twice_keep_one_set_of_faces(
    env: LocalEnvironment, faces_dir: Path
) -> None:
    s3, sqs = env.client("s3"), env.client("sqs")
    bucket = env.resources["UploadBucket"]
    _rekognition(env).create_collection(CollectionId="dups")
    enrolment, group = "enroll/dups/obama/obama.jpg", "photos/dups/two people.jpg"
    uploads = {enrolment: faces_dir / "enroll/obama/obama.jpg", group: faces_dir / "probe/two_people.jpg"}
    for _ in range(2):  # the same object uploaded twice
        for key, path in uploads.items():
            metadata = CONSENTED if key == enrolment else {}
            s3.put_object(Bucket=bucket, Key=key, Body=path.read_bytes(), Metadata=metadata)
    for _ in range(2):  # and its S3 event delivered twice more
        for key in uploads:
            body = {
                "Records": [
                    {
                        "eventName": "ObjectCreated:Put",
                        "s3": {"bucket": {"name": bucket}, "object": {"key": quote_plus(key)}},
                    }
                ]
            }
            sqs.send_message(QueueUrl=env.resources["DetectQueue"], MessageBody=json.dumps(body))
    # Four deliveries of each photo, all processed (the faces really were written again and again).
    _wait_for(lambda: all(_embedded(env)[key] >= 4 for key in uploads), 90, "four deliveries of each photo")
    _wait_for_photos(env, list(uploads))
    for key, faces in ((enrolment, 1), (group, 2)):
        photo = _photo(env, key)
        assert photo["status"] == "COMPLETE" and int(photo["face_count"]) == faces
        stored = _faces_of(env, photo["photo_id"])
        assert sorted(face["face_id"] for face in stored) == sorted(face["face_id"] for face in photo["faces"])
    assert len(_collection_faces(env, "dups")) == 1
    assert _rekognition(env).describe_collection(CollectionId="dups")["FaceCount"] == 1
    matches = _rekognition(env).search_faces_by_image(
        CollectionId="dups", Image={"Bytes": (faces_dir / "probe/obama1.jpg").read_bytes()}, MaxFaces=10
    )["FaceMatches"]
    assert [match["Face"]["ExternalImageId"] for match in matches] == ["obama"]


def test_a_worker_killed_mid_batch_loses_nothing_and_duplicates_nothing(env: LocalEnvironment, faces_dir: Path) -> None:
    s3 = env.client("s3")
    bucket = env.resources["UploadBucket"]
    _rekognition(env).create_collection(CollectionId="crash")
    sources = [faces_dir / "probe/two_people.jpg", faces_dir / "enroll/biden/biden.jpg", faces_dir / "probe/obama1.jpg"]
    keys = [f"crash/{i:02d}-{sources[i % 3].name}" for i in range(12)] + ["enroll/crash/biden/biden.jpg"]
    log = env.log_path("EmbedFunction")
    offset = log.stat().st_size
    # EmbedFunction is paused until every photo is detected, so that its batches are full (5 photos each).
    paused = env.worker_pids("EmbedFunction")
    for pid in paused:
        os.kill(pid, signal.SIGSTOP)  # type: ignore[arg-type]
    try:
        for i, key in enumerate(keys):
            body = sources[i % 3].read_bytes() if i < 12 else sources[1].read_bytes()
            s3.put_object(Bucket=bucket, Key=key, Body=body, Metadata=CONSENTED if key.startswith("enroll/") else {})
        _wait_for(lambda: _count(env, "EmbedQueue") == len(keys), 60, "every photo detected")
    finally:
        for pid in paused:
            os.kill(pid, signal.SIGCONT)  # type: ignore[arg-type]

    # Kill EmbedFunction's process once an invocation has embedded one photo of its batch and not finished.
    killed: str | None = None
    done_in_killed: list[str] = []
    deadline = time.monotonic() + 60
    while killed is None and time.monotonic() < deadline:
        text = log.read_text(encoding="utf-8")[offset:]
        started = [line.split()[2] for line in text.splitlines() if line.startswith("START RequestId:")]
        ended = {line.split()[2] for line in text.splitlines() if line.startswith("END RequestId:")}
        running = [request for request in started if request not in ended]
        if running:
            entries = _json_lines(text)
            done = [
                e["key"]
                for e in entries
                if e.get("function_request_id") == running[-1] and e.get("message") == "faces embedded"
            ]
            pids = env.worker_pids("EmbedFunction")
            if done and None not in pids:
                # Freeze every instance (whichever runs it), make sure the invocation has not ended
                # meanwhile, then kill them all.
                for pid in pids:
                    os.kill(pid, signal.SIGSTOP)  # type: ignore[arg-type]
                time.sleep(0.1)  # what they wrote before stopping reaches the log file
                if f"END RequestId: {running[-1]}" in log.read_text(encoding="utf-8")[offset:]:
                    for pid in pids:
                        os.kill(pid, signal.SIGCONT)  # type: ignore[arg-type]
                    continue
                for pid in pids:
                    os.kill(pid, signal.SIGKILL)  # type: ignore[arg-type]
                killed, done_in_killed = running[-1], done
        time.sleep(0.01)
    assert killed is not None, "never caught EmbedFunction in the middle of a batch"

    def replaced() -> bool:
        return not set(env.worker_pids("EmbedFunction")) & {None, *pids}

    _wait_for(replaced, 30, "new EmbedFunction instances")
    _wait_for_photos(env, keys, timeout=120)
    text = log.read_text(encoding="utf-8")[offset:]
    assert f"END RequestId: {killed}" not in text
    embedded = _embedded(env)
    assert all(embedded[key] >= 2 for key in done_in_killed)  # the killed batch came back after the timeout
    expected = {"two_people.jpg": 2, "biden.jpg": 1, "obama1.jpg": 1}
    for key in keys:
        photo = _photo(env, key)
        assert photo["status"] == "COMPLETE", (key, photo.get("error_message"))
        assert int(photo["face_count"]) == expected[key.rsplit("-", 1)[-1].rsplit("/", 1)[-1]]
        assert len(_faces_of(env, photo["photo_id"])) == int(photo["face_count"]), key
    assert len(_collection_faces(env, "crash")) == 1
    assert _count(env, "EmbedDeadLetterQueue") == 0


def test_dead_letters_are_explained_and_redriven(env: LocalEnvironment, faces_dir: Path) -> None:
    _wait_for(lambda: _count(env, "DetectDeadLetterQueue") == 1, 60, "the poison message in the DLQ")
    # An upload whose processing was lost, as in an outage: its record gone and its event dead-lettered.
    s3, sqs = env.client("s3"), env.client("sqs")
    bucket, key = env.resources["UploadBucket"], "outage/obama.jpg"
    s3.put_object(Bucket=bucket, Key=key, Body=(faces_dir / "enroll/obama/obama.jpg").read_bytes())
    _wait_for_photos(env, [key])
    _table(env, "PhotosTable").delete_item(Key={"photo_id": photo_id_for(bucket, key)})
    lost = {"Records": [{"eventName": "ObjectCreated:Put", "s3": {"bucket": {"name": bucket}, "object": {"key": key}}}]}
    sqs.send_message(QueueUrl=env.resources["DetectDeadLetterQueue"], MessageBody=json.dumps(lost))

    dead_letters = DeadLetters(env.session, env.endpoint_url, env.resources, env.log_dir)
    letters = {letter.keys[0]: letter for letter in dead_letters.explain()}
    poison = letters["s3://Not A Bucket/x.jpg"]
    assert poison.queue == "DetectDeadLetterQueue" and poison.source == "DetectQueue"
    assert poison.receive_count >= 3 and poison.photo_records == []
    assert poison.last_error is not None and "Invalid bucket name" in poison.last_error
    assert letters[f"s3://{bucket}/{key}"].last_error is None

    cli = subprocess.run(
        [
            sys.executable,
            "-m",
            "candor_local.cli.main",
            "dlq",
            "explain",
            "--stack-name",
            "candor-rel",
            "--logs",
            str(env.log_dir),
        ],
        env={**os.environ, **env.environment()},
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    assert poison.message_id in cli.stdout and "Invalid bucket name" in cli.stdout
    assert "record: none" in cli.stdout

    assert dead_letters.redrive("DetectDeadLetterQueue") == {"DetectDeadLetterQueue": 2}
    _wait_for(lambda: _photo(env, key).get("status") == "COMPLETE", 60, "the redriven upload")
    assert int(_photo(env, key)["face_count"]) == 1


# ------------------------------------------------------------------------------------------- retries


class _FlakyDynamo(BaseHTTPRequestHandler):
    """DynamoDB that answers with the queued errors first, then an empty GetItem result."""

    errors: ClassVar[list[tuple[int, str]]] = []
    requests: ClassVar[int] = 0

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        type(self).requests += 1
        status, error = type(self).errors.pop(0) if type(self).errors else (200, "")
        body = json.dumps({"__type": f"com.amazonaws.dynamodb.v20120810#{error}", "message": error} if error else {})
        self.send_response(status)
        self.send_header("Content-Type", "application/x-amz-json-1.0")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body.encode())

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def flaky_dynamo(monkeypatch: pytest.MonkeyPatch) -> Iterator[type[_FlakyDynamo]]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FlakyDynamo)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("AWS_ENDPOINT_URL_DYNAMODB", f"http://127.0.0.1:{server.server_address[1]}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    _FlakyDynamo.requests, _FlakyDynamo.errors = 0, []
    yield _FlakyDynamo
    server.shutdown()


def test_throttling_and_server_errors_are_retried_with_backoff(flaky_dynamo: type[_FlakyDynamo]) -> None:
    flaky_dynamo.errors = [(400, "ThrottlingException"), (500, "InternalServerError")]
    assert DynamoPhotoRepository("photos").get("p1") is None
    assert flaky_dynamo.requests == 3


def test_a_permanent_error_is_not_retried(flaky_dynamo: type[_FlakyDynamo]) -> None:
    flaky_dynamo.errors = [(400, "ValidationException")]
    with pytest.raises(ClientError, match="ValidationException"):
        DynamoPhotoRepository("photos").get("p1")
    assert flaky_dynamo.requests == 1
