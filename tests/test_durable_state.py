"""The embedded emulator keeps its state in a data directory: after a kill -9 and a restart, the objects,
items, queues, keys and whole stacks are back, on the same port, and messages that were in flight are
visible again at once. Then `candor up` itself, killed and restarted with photos enrolled and digests
signed: nothing lost, the person still found, the audit log still verified against its digests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from candor_local.emulator.moto_server import EMULATOR_CREDENTIALS, EMULATOR_REGION
from candor_local.emulator.persistence import MAX_DELAY_S, QUIET_S, STATE_FILE, is_read

ROOT = Path(__file__).resolve().parents[1]
CHILD = (
    "import sys, threading; from pathlib import Path; "
    "from candor_local.emulator.moto_server import MotoEmulator; "
    "emulator = MotoEmulator(data_dir=Path(sys.argv[1])); print(emulator.start(), flush=True); "
    "print(emulator.restored, flush=True); threading.Event().wait()"
)


class Emulator:
    """moto server with a data directory, in a process of its own, so that it can be killed."""

    def __init__(self, data_dir: Path) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(data_dir)], stdout=subprocess.PIPE, text=True, env=dict(os.environ)
        )
        assert self.process.stdout is not None
        self.url = self.process.stdout.readline().strip()
        restored = self.process.stdout.readline().strip()
        self.restored: dict[str, int] | None = None if restored == "None" else json.loads(restored.replace("'", '"'))
        assert self.url.startswith("http://127.0.0.1:"), self.url

    def client(self, service: str) -> Any:
        return boto3.client(
            service,
            endpoint_url=self.url,
            region_name=EMULATOR_REGION,
            aws_access_key_id=EMULATOR_CREDENTIALS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=EMULATOR_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        )

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)


@pytest.fixture
def emulators() -> Iterator[list[Emulator]]:
    started: list[Emulator] = []
    yield started
    for emulator in started:
        if emulator.process.poll() is None:
            emulator.kill()


def test_reads_polls_and_receives_take_no_snapshot_writes_do() -> None:
    assert is_read("POST", "/", "DynamoDB_20120810.Query", "")
    assert is_read("POST", "/", "AmazonSQS.ReceiveMessage", "")
    assert is_read("GET", "/bucket/key", "", "")
    assert is_read("POST", "/QueryVectors", "", "")
    assert not is_read("POST", "/", "DynamoDB_20120810.PutItem", "")
    assert not is_read("POST", "/", "AmazonSQS.DeleteMessage", "")
    assert not is_read("PUT", "/bucket/key", "", "")
    assert not is_read("POST", "/", "", "CreateStack")


def test_a_killed_emulator_comes_back_with_everything_and_redelivers_in_flight_messages(
    tmp_path: Path, emulators: list[Emulator]
) -> None:
    first = Emulator(tmp_path)
    emulators.append(first)
    assert first.restored is None
    s3, dynamodb, sqs, kms = (first.client(name) for name in ("s3", "dynamodb", "sqs", "kms"))
    s3.create_bucket(Bucket="photos")
    s3.put_object(Bucket="photos", Key="enroll/staff/alice/1.jpg", Body=b"\xff\xd8photo")
    dynamodb.create_table(
        TableName="faces",
        KeySchema=[{"AttributeName": "face_id", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "face_id", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    dynamodb.put_item(TableName="faces", Item={"face_id": {"S": "f1"}, "person": {"S": "alice"}})
    queue = sqs.create_queue(QueueName="embed", Attributes={"VisibilityTimeout": "720"})["QueueUrl"]
    sqs.send_message(QueueUrl=queue, MessageBody="photo 1")
    sqs.send_message(QueueUrl=queue, MessageBody="photo 2")
    (in_flight,) = sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=1)["Messages"]
    key = kms.create_key(KeySpec="ECC_NIST_P256", KeyUsage="SIGN_VERIFY")["KeyMetadata"]["KeyId"]
    signature = kms.sign(KeyId=key, Message=b"digest", SigningAlgorithm="ECDSA_SHA_256")["Signature"]
    time.sleep(MAX_DELAY_S + QUIET_S + 0.5)  # the snapshot after the last change
    assert (tmp_path / STATE_FILE).is_file()
    first.kill()

    second = Emulator(tmp_path)
    emulators.append(second)
    assert second.url == first.url  # the same port: the stack's queue URLs and CANDOR_API stay right
    assert second.restored is not None and second.restored["messages_made_visible"] == 1
    s3, dynamodb, sqs, kms = (second.client(name) for name in ("s3", "dynamodb", "sqs", "kms"))
    assert s3.get_object(Bucket="photos", Key="enroll/staff/alice/1.jpg")["Body"].read() == b"\xff\xd8photo"
    assert dynamodb.get_item(TableName="faces", Key={"face_id": {"S": "f1"}})["Item"]["person"] == {"S": "alice"}
    received = sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10, WaitTimeSeconds=1)["Messages"]
    # The message in flight at the kill is visible at once, not after its 720 s visibility timeout.
    assert sorted(m["Body"] for m in received) == ["photo 1", "photo 2"]
    assert in_flight["Body"] in {m["Body"] for m in received}
    assert kms.verify(KeyId=key, Message=b"digest", Signature=signature, SigningAlgorithm="ECDSA_SHA_256")[
        "SignatureValid"
    ]


def test_a_second_emulator_on_a_data_directory_in_use_says_so(tmp_path: Path, emulators: list[Emulator]) -> None:
    emulators.append(Emulator(tmp_path))
    failed = subprocess.run(
        [sys.executable, "-c", CHILD, str(tmp_path)], capture_output=True, text=True, timeout=60, check=False
    )
    assert failed.returncode != 0
    assert "is another `candor up` running on it?" in failed.stderr


class CandorUp:
    """`candor up --data DIR` in a process of its own, with its own cache folder (state file, data)."""

    def __init__(self, cache: Path, data_dir: Path, model_dir: Path) -> None:
        env = {**os.environ, "XDG_CACHE_HOME": str(cache), "MODEL_DIR": str(model_dir), "CANDOR_STACK": "durable"}
        for name in ("AWS_ENDPOINT_URL", "CANDOR_API"):
            env.pop(name, None)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "candor_local.cli.main", "up", "--data", str(data_dir)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=ROOT,
        )
        assert self.process.stdout is not None and self.process.stderr is not None
        self.lines = [self.process.stdout.readline().strip(), self.process.stdout.readline().strip()]
        assert self.lines[1].startswith("CANDOR_API="), self.process.stderr.read() if not self.lines[1] else self.lines
        self.state_line = ""
        while not self.state_line.startswith("state:"):
            self.state_line = self.process.stderr.readline().strip()

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)
        time.sleep(1.5)  # its workers notice their parent is gone and exit


@pytest.mark.integration
def test_candor_up_killed_and_restarted_loses_nothing(
    tmp_path: Path,
    model_dir: Path,
    faces_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    from candor_local.cli import connection
    from candor_local.cli import main as cli

    cache, data_dir = tmp_path / "cache", tmp_path / "data"
    monkeypatch.setattr(connection, "STATE_FILE", cache / "candor" / "up.json")
    monkeypatch.setenv("CANDOR_STACK", "durable")
    for name in ("AWS_ENDPOINT_URL", "CANDOR_API", "CANDOR_PURPOSE", "CANDOR_CASE"):
        monkeypatch.delenv(name, raising=False)
    up = CandorUp(cache, data_dir, model_dir)
    try:
        assert up.state_line == f"state: kept in {data_dir}"
        assert (
            cli.main(
                [
                    "enroll",
                    str(faces_dir / "enroll" / "obama"),
                    "--person",
                    "obama",
                    "--collection",
                    "staff",
                    "--consent",
                    "FORM-1",
                ]
            )
            == 0
        )
        assert cli.main(["search", str(faces_dir / "probe" / "obama1.jpg"), "--collection", "staff", "--json"]) == 0
        before = json.loads(capfd.readouterr().out.splitlines()[-1])
        assert cli.main(["audit", "digest"]) == 0
        capfd.readouterr()
        time.sleep(MAX_DELAY_S + QUIET_S + 0.5)
    finally:
        up.kill()

    again = CandorUp(cache, data_dir, model_dir)
    try:
        assert again.lines == up.lines  # the same AWS_ENDPOINT_URL and CANDOR_API as before the kill
        assert again.state_line.startswith(f"state: restored from {data_dir}")
        assert cli.main(["search", str(faces_dir / "probe" / "obama1.jpg"), "--collection", "staff", "--json"]) == 0
        after = json.loads(capfd.readouterr().out.splitlines()[-1])
        assert {m["identity"] for f in after["faces"] for m in f["matches"]} == {"obama"}
        assert after["faces"][0]["matches"] == before["faces"][0]["matches"]
        assert cli.main(["audit", "verify"]) == 0
        out = capfd.readouterr().out
        assert "staff: " in out and ", signed up to " in out and "signatures valid, none missing" in out
    finally:
        again.kill()


def test_messages_a_killed_instance_held_on_an_outside_endpoint_are_visible_at_the_next_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """LocalStack or a moto server of one's own outlives `candor up`: what its instances held when killed is
    released by the next start, not after the 720 s visibility timeout; a settled batch leaves no note."""
    from moto import mock_aws

    from candor_local.emulator.runtime import release_in_flight
    from candor_local.emulator.worker import InFlight, QueuePoller
    from candor_local.emulator.worker_config import QueueSource

    for name, value in EMULATOR_CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    with mock_aws():
        sqs = boto3.client("sqs", region_name=EMULATOR_REGION)
        queue = sqs.create_queue(QueueName="embed", Attributes={"VisibilityTimeout": "720"})["QueueUrl"]
        for body in ("photo 1", "photo 2"):
            sqs.send_message(QueueUrl=queue, MessageBody=body)
        source = QueueSource(queue, f"arn:aws:sqs:{EMULATOR_REGION}:123456789012:embed", 1, 0, True)
        settled = QueuePoller(source, lambda event: {"batchItemFailures": []}, EMULATOR_REGION, threading.Event(),
                              InFlight(str(tmp_path), "EmbedFunction-0"))  # fmt: skip
        settled.process(settled.receive_batch())
        assert not list(tmp_path.glob("*.json"))  # photo 1 done and deleted: nothing noted

        killed = InFlight(str(tmp_path), "EmbedFunction-2-0")
        held = sqs.receive_message(QueueUrl=queue)["Messages"]
        killed.hold(queue, held)  # the instance dies here, before the batch is settled
        assert sqs.receive_message(QueueUrl=queue).get("Messages") is None

        assert release_in_flight(tmp_path, sqs) == 1
        (again,) = sqs.receive_message(QueueUrl=queue)["Messages"]
        assert again["Body"] == "photo 2" and not list(tmp_path.glob("*.json"))
