"""Signed audit digests: each tampering a hash chain alone cannot show (a chain re-hashed to its head, cut
at its end, deleted whole) and each one done to the digests (a forged, overwritten, deleted or missing
digest) fails `candor audit verify`, against a stack built from template.yaml's own resource definitions
(KMS key, Object Lock bucket, tables) under moto."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import boto3
import pytest
from botocore.exceptions import ClientError
from moto import mock_aws

from candor.accountability.audit import AuditEvent, AuditLog, AuditRecord, chain_hash
from candor.accountability.digests import SignedDigest, verify_digests, write_digest
from candor.adapters.aws import DynamoAuditStore, KmsDigestSigner, S3DigestStore
from candor_local.cli import audit as audit_cli
from candor_local.cli import connection
from candor_local.cli import main as cli
from candor_local.emulator import moto_kms
from candor_local.emulator.template import load_yaml

ROOT = Path(__file__).resolve().parents[1]
START = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
RESOURCES = ("AuditTable", "CollectionsTable", "AuditDigestKey", "AuditDigestBucket")


def ticking_clock(step: timedelta = timedelta(minutes=1)) -> Callable[[], datetime]:
    ticks = iter(range(1_000_000))
    return lambda: START + step * next(ticks)


@pytest.fixture
def stack(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[dict[str, str]]:
    """A stack "candor" with the audit table, the collections table, the digest key and the digest bucket
    exactly as template.yaml defines them; returns logical id -> physical id."""
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(name, "testing")
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("AWS_REGION", raising=False)
    monkeypatch.setattr(connection, "STATE_FILE", tmp_path / "no-stack-running.json")
    template = load_yaml(ROOT / "template.yaml")
    body = {
        "Parameters": {"AuditDigestRetentionDays": template["Parameters"]["AuditDigestRetentionDays"]},
        "Resources": {
            name: {"Type": template["Resources"][name]["Type"], "Properties": template["Resources"][name]["Properties"]}
            for name in RESOURCES
        },
    }
    with mock_aws():
        moto_kms.honour_key_spec()
        cloudformation = boto3.client("cloudformation")
        cloudformation.create_stack(StackName="candor", TemplateBody=json.dumps(body))
        ids = connection.physical_ids(cloudformation, "candor")
        # What the emulator's stack step applies where moto's CloudFormation leaves it out.
        lock = body["Resources"]["AuditDigestBucket"]["Properties"]["ObjectLockConfiguration"]
        days = int(template["Parameters"]["AuditDigestRetentionDays"]["Default"])
        s3 = boto3.client("s3")
        s3.put_bucket_versioning(Bucket=ids["AuditDigestBucket"], VersioningConfiguration={"Status": "Enabled"})
        s3.put_object_lock_configuration(
            Bucket=ids["AuditDigestBucket"],
            ObjectLockConfiguration={
                "ObjectLockEnabled": "Enabled",
                "Rule": {"DefaultRetention": {"Mode": lock["Rule"]["DefaultRetention"]["Mode"], "Days": days}},
            },
        )
        yield ids


class Parts:
    def __init__(self, ids: dict[str, str]) -> None:
        self.ids = ids
        self.audit = DynamoAuditStore(ids["AuditTable"])
        self.log = AuditLog(self.audit, clock=ticking_clock())
        self.digests = S3DigestStore(ids["AuditDigestBucket"])
        self.signer = KmsDigestSigner(ids["AuditDigestKey"])
        self.table = boto3.resource("dynamodb").Table(ids["AuditTable"])

    def append(self, chain: str, count: int) -> list[AuditRecord]:
        return [self.log.append(chain, AuditEvent.SEARCH, caller="alice", n=n) for n in range(count)]

    def digest(self, *collections: str) -> SignedDigest:
        return write_digest(self.audit, self.digests, self.signer, collections, clock=ticking_clock(timedelta(hours=1)))

    def put(self, record: AuditRecord) -> None:
        self.table.put_item(
            Item={
                "chain": record.chain,
                "seq": record.seq,
                "body": record.body,
                "prev_hash": record.prev_hash,
                "hash": record.hash,
            }
        )

    def delete(self, chain: str, seq: int) -> None:
        self.table.delete_item(Key={"chain": chain, "seq": seq})


@pytest.fixture
def parts(stack: dict[str, str]) -> Parts:
    return Parts(stack)


def verify(capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[int, str]:
    code = cli.main(["audit", "verify", *extra])
    return code, capsys.readouterr().out


def test_template_key_signs_and_bucket_locks_in_compliance_mode(parts: Parts) -> None:
    key = boto3.client("kms").describe_key(KeyId=parts.ids["AuditDigestKey"])["KeyMetadata"]
    assert (key["KeySpec"], key["KeyUsage"]) == ("ECC_NIST_P256", "SIGN_VERIFY")
    lock = boto3.client("s3").get_object_lock_configuration(Bucket=parts.ids["AuditDigestBucket"])
    retention = lock["ObjectLockConfiguration"]["Rule"]["DefaultRetention"]
    assert (retention["Mode"], retention["Days"]) == ("COMPLIANCE", 365)


def test_moto_still_makes_every_cloudformation_key_symmetric() -> None:
    """When this fails, moto's CloudFormation honours KeySpec: candor_local/emulator/moto_kms.py can go."""
    with mock_aws():
        key = moto_kms.MOTO_CREATE_FROM_CLOUDFORMATION(
            "Key",
            {"Properties": {"KeyPolicy": {}, "KeySpec": "ECC_NIST_P256", "KeyUsage": "SIGN_VERIFY"}},
            "123456789012",
            "us-east-1",
        )
    assert key.key_spec == "SYMMETRIC_DEFAULT"


def test_an_intact_log_verifies_against_its_digests(parts: Parts, capsys: pytest.CaptureFixture[str]) -> None:
    staff = parts.append("staff", 3)
    parts.digest("staff")
    parts.append("staff", 1)  # after the digest: covered by the chain until the next one
    second = parts.digest("staff")

    assert second.number == 2 and second.heads["staff"].seq == 4
    assert second.fields["previous_signature"] is not None
    code, out = verify(capsys)
    assert code == 0, out
    lines = out.splitlines()
    assert lines[0].startswith("staff: 4 entries, head 4 ") and lines[0].endswith(", signed up to 4, intact")
    assert lines[1].startswith("signed digests: 2, newest 2 at ") and lines[1].endswith("none missing")
    assert lines[-1] == "1 chain(s), 4 entries: all intact"
    assert staff[0].seq == 1


def test_a_chain_rehashed_to_its_head_fails(parts: Parts, capsys: pytest.CaptureFixture[str]) -> None:
    records = parts.append("staff", 4)
    parts.digest("staff")
    # Rewrite entry 2 and re-hash every entry after it: the chain alone is consistent again.
    prev_hash = records[0].hash
    for record in records[1:]:
        body = record.body.replace('"caller":"alice"', '"caller":"mallory"') if record.seq == 2 else record.body
        forged = AuditRecord(record.chain, record.seq, body, prev_hash, chain_hash(prev_hash, body))
        parts.put(forged)
        prev_hash = forged.hash

    code, out = verify(capsys)
    assert code == 1
    assert "chain rewritten: entry 4 is not the one digest 1 signed" in out
    code, out = verify(capsys, "--json")
    chain, digests = (json.loads(line) for line in out.splitlines())
    assert chain["chain"] == "staff" and chain["intact"] is False and chain["signed_seq"] == 4
    assert any(problem.startswith("chain rewritten") for problem in chain["problems"])
    assert digests == {
        "digests": {
            "count": 1,
            "newest": 1,
            "newest_time": digests["digests"]["newest_time"],
            "intact": True,
            "problems": [],
        }
    }


def test_entries_cut_from_the_end_fail(parts: Parts, capsys: pytest.CaptureFixture[str]) -> None:
    parts.append("staff", 5)
    parts.digest("staff")
    parts.delete("staff", 5)
    parts.delete("staff", 4)

    code, out = verify(capsys)
    assert code == 1
    assert "  entries 4-5 cut from the end: digest 1 signed up to 5, the chain ends at 3" in out


def test_a_chain_deleted_while_its_collection_exists_fails(parts: Parts, capsys: pytest.CaptureFixture[str]) -> None:
    parts.append("staff", 2)
    parts.append("visitors", 1)
    parts.digest("staff", "visitors")
    for seq in (1, 2):
        parts.delete("staff", seq)

    code, out = verify(capsys)
    assert code == 1
    assert "staff: no entries, 1 problem(s):" in out
    assert "  chain deleted: digest 1 signed 2 entries up to hash" in out
    # The next digest does not sign the deletion over: it keeps the chain's last signed head.
    carried = parts.digest("visitors")
    assert carried.fields["missing_chains"] == ["staff"] and carried.heads["staff"].seq == 2
    assert verify(capsys)[0] == 1


def test_a_locked_digest_cannot_be_deleted_and_a_delete_marker_is_reported(
    parts: Parts, capsys: pytest.CaptureFixture[str]
) -> None:
    parts.append("staff", 1)
    parts.digest("staff")
    s3 = boto3.client("s3")
    bucket, key = parts.ids["AuditDigestBucket"], S3DigestStore.key(1)
    (version,) = s3.list_object_versions(Bucket=bucket, Prefix=key)["Versions"]
    with pytest.raises(ClientError, match="AccessDenied"):
        s3.delete_object(Bucket=bucket, Key=key, VersionId=version["VersionId"])
    s3.delete_object(Bucket=bucket, Key=key)  # allowed: it only hides the locked version

    code, out = verify(capsys)
    assert code == 1
    assert f"  {key}: deleted (a delete marker hides it; its locked version remains)" in out


def test_an_overwritten_or_forged_digest_fails(parts: Parts, capsys: pytest.CaptureFixture[str]) -> None:
    parts.append("staff", 2)
    first = parts.digest("staff")
    other_key = boto3.client("kms").create_key(KeySpec="ECC_NIST_P256", KeyUsage="SIGN_VERIFY")["KeyMetadata"]
    forged_fields = {**first.fields, "chains": [{"chain": "staff", "seq": 1, "hash": "f" * 64}]}
    forged_body = json.dumps(forged_fields, sort_keys=True, separators=(",", ":"))
    forged = SignedDigest(forged_body, KmsDigestSigner(other_key["Arn"]).sign(forged_body.encode()))
    # Object Lock keeps the original as an older version; the overwrite is a second version of the number.
    boto3.client("s3").put_object(
        Bucket=parts.ids["AuditDigestBucket"], Key=S3DigestStore.key(1), Body=forged.to_json()
    )

    code, out = verify(capsys)
    assert code == 1
    assert "digest 1 (audit-digests/0000000001.json version" in out
    assert "the signature does not match the public key" in out


def test_a_missing_digest_and_a_broken_link_are_named(parts: Parts) -> None:
    parts.append("staff", 1)
    written = []
    for _ in range(4):
        parts.append("staff", 1)
        written.append(parts.digest("staff"))
    public = audit_cli.signature_check(parts.signer.public_key())
    chains = {"staff": list(parts.audit.entries("staff"))}

    stored = [(f"#{d.number}", d.to_json()) for d in written if d.number != 3]
    result = verify_digests(stored, public, chains)
    assert result.problems == ["digest 3 missing: digest 2 is followed by 4"]

    # A digest signed with the right key (a stolen Sign permission) that skips its predecessor's signature.
    relinked = {**written[1].fields, "previous_signature": None}
    body = json.dumps(relinked, sort_keys=True, separators=(",", ":"))
    swapped = [(f"#{d.number}", d.to_json()) for d in written if d.number != 2]
    swapped.append(("#2", SignedDigest(body, parts.signer.sign(body.encode())).to_json()))
    result = verify_digests(swapped, public, chains)
    assert result.problems == [
        "digest 2 does not link to digest 1: its previous signature differs",
        "digest 3 does not link to digest 2: its previous signature differs",
    ]

    without_first = [(f"#{d.number}", d.to_json()) for d in written if d.number != 1]
    assert verify_digests(without_first, public, chains).problems == ["digest 1 missing: the first kept is 2"]


def test_two_digests_cannot_take_one_number(parts: Parts) -> None:
    parts.append("staff", 1)
    digest = parts.digest("staff")
    assert parts.digests.put_new(digest) is False
    assert parts.digests.latest() == digest


def test_the_digest_schedule_runs_locally_as_eventbridge_would() -> None:
    from candor_local.emulator.runtime import schedule_period_s, scheduled_functions
    from candor_local.emulator.stack import DeployedStack, Endpoint
    from candor_local.emulator.template import load_template

    assert schedule_period_s("rate(1 hour)") == 3600
    assert schedule_period_s("rate(5 minutes)") == 300
    assert schedule_period_s("cron(0 * * * ? *)") is None
    template = load_template(ROOT / "template.yaml", {"AuditDigestSchedule": "rate(10 minutes)"}, "us-east-1")
    # Resolving a parameter needs no deployed resource.
    stack = DeployedStack(
        name="candor",
        stack_id="arn:aws:cloudformation:us-east-1:000000000000:stack/candor/1",
        endpoint=Endpoint(session=boto3.session.Session(region_name="us-east-1"), url=None),
        template=template,
        parameters={"AuditDigestSchedule": "rate(10 minutes)"},
        physical_ids={},
    )
    assert scheduled_functions(template, stack) == [("DigestFunction", "rate(10 minutes)", 600)]
