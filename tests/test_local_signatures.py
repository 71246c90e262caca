"""The local Function URLs verify SigV4 signatures against the local credentials (key id -> secret -> role)
and let through only the roles the template lets invoke them: requests signed by botocore, then changed or
signed wrongly, get the 403s AWS answers with. The integration tests at the end do it through the running
stack: the search key refused on the admin URL, the admin key served there, `test`/`test` on the face API."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.exceptions import ClientError

from candor_local.cli.connection import ADMIN_VARIABLES
from candor_local.emulator.function_url import SignatureRefused, authenticate, invoke_function_url
from candor_local.emulator.local_credentials import (
    ADMIN_CREDENTIALS_FILE,
    ADMIN_ROLE,
    SEARCH_ROLE,
    admin_pair,
    local_credentials,
)
from candor_local.emulator.worker_config import LocalCredential, UrlConfig, WorkerConfig

REGION = "us-east-1"
URL = "http://127.0.0.1:9999/"
SEARCH = LocalCredential("SEARCHKEY", "search-secret", SEARCH_ROLE, "candor-FaceApiSearchRole")
ADMIN = LocalCredential("ADMINKEY", "admin-secret", ADMIN_ROLE, "candor-PolicyAdminRole")
SEARCH_URL = UrlConfig(
    host="127.0.0.1",
    port=9999,
    auth_type="AWS_IAM",
    account_id="000000000000",
    function_arn="arn:aws:lambda:us-east-1:000000000000:function:candor-SearchFunction",
    credentials=[SEARCH],
    other_keys={ADMIN.access_key_id: ADMIN.role_name},
)
BODY = b'{"CollectionId": "staff"}'
# Two more search keys, each a caller of its own.
ALICE = LocalCredential("AKIDEXAMPLEALICE", "alice-secret", SEARCH_ROLE)
BOB = LocalCredential("AKIDEXAMPLEBOB", "bob-secret", SEARCH_ROLE)


def _signed(
    key_id: str = SEARCH.access_key_id,
    secret: str = SEARCH.secret_access_key,
    body: bytes = BODY,
    url: str = URL,
    headers: dict[str, str] | None = None,
    region: str = REGION,
    service: str = "lambda",
    token: str | None = None,
) -> list[tuple[str, str]]:
    """The headers botocore's signer puts on a request, as the HTTP server hands them over (with Host)."""
    request = AWSRequest(
        method="POST",
        url=url,
        data=body,
        headers={"Content-Type": "application/x-amz-json-1.1", "X-Amz-Target": "RekognitionService.ListCollections"}
        | (headers or {}),
    )
    SigV4Auth(Credentials(key_id, secret, token), service, region).add_auth(request)
    return [("Host", "127.0.0.1:9999"), *request.headers.items()]


def _refusal(headers: list[tuple[str, str]], body: bytes = BODY, target: str = "/", **kwargs: Any) -> SignatureRefused:
    with pytest.raises(SignatureRefused) as refused:
        authenticate(SEARCH_URL, REGION, "POST", target, headers, body, **kwargs)
    return refused.value


# --- the verifier -----------------------------------------------------------------------------------------


def test_a_request_botocore_signed_with_a_known_key_is_verified() -> None:
    assert authenticate(SEARCH_URL, REGION, "POST", "/", _signed(), BODY) == SEARCH


def test_a_session_token_and_a_path_with_a_query_are_signed_over_too() -> None:
    url = URL + "echo/some%20path?x=1&x=2&y="
    headers = _signed(url=url, token="session-token", headers={"User-Agent": "curl/8", "Cookie": "a=1"})
    assert authenticate(SEARCH_URL, REGION, "POST", "/echo/some%20path?x=1&x=2&y=", headers, BODY) == SEARCH
    assert _refusal(headers, target="/echo/some%20path?x=1&x=2&y=3").error_type == "InvalidSignatureException"


def test_a_wrong_secret_is_an_invalid_signature() -> None:
    refused = _refusal(_signed(secret="not-the-secret"))
    assert (refused.status, refused.error_type) == (403, "InvalidSignatureException")
    assert refused.message.startswith("The request signature we calculated does not match")


def test_an_unknown_key_id_is_an_unrecognised_client() -> None:
    refused = _refusal(_signed(key_id="AKIDUNKNOWN"))
    assert (refused.status, refused.error_type) == (403, "UnrecognizedClientException")
    assert refused.message == "The security token included in the request is invalid."


def test_a_body_changed_after_signing_is_an_invalid_signature() -> None:
    refused = _refusal(_signed(), body=b'{"CollectionId": "other"}')
    assert refused.error_type == "InvalidSignatureException"


def test_a_declared_payload_hash_must_be_the_bodys() -> None:
    import hashlib

    headers = _signed(headers={"X-Amz-Content-SHA256": hashlib.sha256(BODY).hexdigest()})
    assert authenticate(SEARCH_URL, REGION, "POST", "/", headers, BODY) == SEARCH
    refused = _refusal(headers, body=b'{"CollectionId": "other"}')
    assert "x-amz-content-sha256" in refused.message


def test_a_changed_signed_header_is_an_invalid_signature() -> None:
    headers = [
        (name, "RekognitionService.DeleteCollection" if name == "X-Amz-Target" else value) for name, value in _signed()
    ]
    assert _refusal(headers).error_type == "InvalidSignatureException"


def test_a_signature_more_than_15_minutes_old_or_ahead_has_expired() -> None:
    headers = _signed()
    signed_at = datetime.strptime(dict(headers)["X-Amz-Date"], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    assert authenticate(SEARCH_URL, REGION, "POST", "/", headers, BODY, now=signed_at + timedelta(minutes=14))
    late = _refusal(headers, now=signed_at + timedelta(minutes=16))
    assert late.error_type == "InvalidSignatureException" and late.message.startswith("Signature expired")
    early = _refusal(headers, now=signed_at - timedelta(minutes=16))
    assert early.error_type == "InvalidSignatureException" and early.message.startswith("Signature not yet current")


def test_a_key_whose_role_may_not_invoke_the_url_is_denied_naming_role_and_function() -> None:
    refused = _refusal(_signed(ADMIN.access_key_id, ADMIN.secret_access_key))
    assert (refused.status, refused.error_type) == (403, "AccessDeniedException")
    assert "assumed-role/candor-PolicyAdminRole/ADMINKEY" in refused.message
    assert "lambda:InvokeFunctionUrl" in refused.message and SEARCH_URL.function_arn in refused.message


def test_scope_service_and_region_must_be_the_urls() -> None:
    assert "service: 'lambda'" in _refusal(_signed(service="s3")).message
    # What a plain boto3 Rekognition client signs for, which the face API accepts as it promises.
    assert authenticate(SEARCH_URL, REGION, "POST", "/", _signed(service="rekognition"), BODY) == SEARCH
    assert "valid region" in _refusal(_signed(region="eu-west-1")).message


def test_unsigned_and_presigned_requests_are_refused() -> None:
    assert _refusal([("Host", "127.0.0.1:9999")]).message == "Forbidden"
    presigned = _refusal([("Host", "127.0.0.1:9999")], target="/?X-Amz-Signature=abc&X-Amz-Credential=k/x")
    assert "presigned" in presigned.message


def test_a_url_config_keeps_its_credentials_through_the_worker_config_file(tmp_path: Path) -> None:
    config = WorkerConfig(
        logical_id="SearchFunction",
        function_name="candor-SearchFunction",
        function_arn=SEARCH_URL.function_arn,
        handler="app.lambda_handler",
        python_path=[],
        timeout_s=3,
        memory_mb=128,
        region=REGION,
        ready_file=str(tmp_path / "ready"),
        function_url=SEARCH_URL,
    )
    config.dump(tmp_path / "config.json")
    assert WorkerConfig.load(tmp_path / "config.json") == config


# --- the local credentials --------------------------------------------------------------------------------


def test_the_admin_pair_is_made_once_per_folder_and_kept_private(tmp_path: Path) -> None:
    key_id, secret = admin_pair(tmp_path)
    assert key_id.startswith("CANDORADMIN") and len(key_id) == 23 and key_id.isalnum() and key_id.isupper()
    assert len(secret) == 40
    assert admin_pair(tmp_path) == (key_id, secret)
    assert (tmp_path / ADMIN_CREDENTIALS_FILE).stat().st_mode & 0o077 == 0
    assert admin_pair(tmp_path / "another")[0] != key_id


def test_the_default_credentials_are_the_search_pairs_and_the_admin_pair(tmp_path: Path) -> None:
    credentials = local_credentials("candor", tmp_path)
    roles = {key: (c.secret_access_key, c.role) for key, c in credentials.items()}
    admin_key, admin_secret = admin_pair(tmp_path)
    assert roles == {
        "test": ("test", SEARCH_ROLE),
        "testing": ("testing", SEARCH_ROLE),
        admin_key: (admin_secret, ADMIN_ROLE),
    }
    assert credentials["test"].role_name == "candor-FaceApiSearchRole"


# --- through the running stack ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def env(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from candor_local.emulator.runtime import LocalEnvironment

    with LocalEnvironment.start(
        stack_name="candor-signatures",
        model_dir=model_dir,
        log_dir=tmp_path_factory.mktemp("logs"),
        credentials=[ALICE, BOB],
    ) as environment:
        yield environment


def _rekognition(env: Any, url: str, key_id: str, secret: str) -> Any:
    client = boto3.session.Session(
        aws_access_key_id=key_id, aws_secret_access_key=secret, region_name=env.region
    ).client("rekognition", endpoint_url=url)
    client.meta.events.register("before-sign.rekognition", _sign_as_lambda)
    return client


def _sign_as_lambda(request: AWSRequest, **_: Any) -> None:
    request.context.setdefault("signing", {})["signing_name"] = "lambda"


def _call(env: Any, url: str, target: str, body: dict[str, Any], key_id: str, secret: str) -> tuple[int, Any]:
    session = boto3.session.Session(aws_access_key_id=key_id, aws_secret_access_key=secret, region_name=env.region)
    status, _, payload = invoke_function_url(
        url,
        "POST",
        json.dumps(body),
        headers={"Content-Type": "application/x-amz-json-1.1", "X-Amz-Target": target},
        session=session,
        region=env.region,
    )
    return status, json.loads(payload)


@pytest.mark.integration
def test_the_search_key_is_refused_on_the_admin_url_and_the_admin_key_is_served(env: Any) -> None:
    admin = env.admin_credentials
    collection = "signed-admin"
    policy = {"CollectionId": collection, "Policy": {"Purposes": ["general", "fraud"]}}
    status, refused = _call(env, env.admin_url, "CandorService.CreateCollection", policy, "test", "test")
    assert (status, refused["__type"]) == (403, "AccessDeniedException")
    assert "FaceApiSearchRole" in refused["Message"] and "AdminFunction" in refused["Message"]

    status, created = _call(
        env, env.admin_url, "CandorService.CreateCollection", policy, admin.access_key_id, admin.secret_access_key
    )
    assert status == 200 and created["CollectionArn"].endswith(f"collection/{collection}")

    # The admin key may not search: its role is not let invoke the face API.
    status, refused = _call(
        env, env.api_url, "RekognitionService.ListCollections", {}, admin.access_key_id, admin.secret_access_key
    )
    assert (status, refused["__type"]) == (403, "AccessDeniedException") and "PolicyAdminRole" in refused["Message"]

    # The conventional local pair searches, and reads the policy there.
    rekognition = _rekognition(env, env.api_url, "test", "test")
    assert collection in rekognition.list_collections()["CollectionIds"]
    status, described = _call(
        env, env.api_url, "CandorService.DescribeCollectionPolicy", {"CollectionId": collection}, "test", "test"
    )
    assert status == 200 and described["Policy"]["Purposes"] == ["general", "fraud"]

    # boto3's own Rekognition client deletes the collection on the admin URL with the admin session only.
    with pytest.raises(ClientError) as refused:
        _rekognition(env, env.admin_url, "test", "test").delete_collection(CollectionId=collection)
    assert refused.value.response["Error"]["Code"] == "AccessDeniedException"
    admin_client = env.admin_session.client("rekognition", endpoint_url=env.admin_url)
    assert admin_client.delete_collection(CollectionId=collection)["StatusCode"] == 200
    assert collection not in rekognition.list_collections()["CollectionIds"]


@pytest.mark.integration
def test_a_wrong_secret_or_an_unknown_key_gets_403_from_the_face_api(env: Any) -> None:
    with pytest.raises(ClientError) as refused:
        _rekognition(env, env.api_url, "test", "not-test").list_collections()
    assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    assert refused.value.response["Error"]["Code"] == "InvalidSignatureException"
    with pytest.raises(ClientError) as refused:
        _rekognition(env, env.api_url, "AKIDNOBODYKNOWS", "test").list_collections()
    assert refused.value.response["Error"]["Code"] == "UnrecognizedClientException"


@pytest.mark.integration
def test_a_tampered_body_is_refused_before_the_function_runs(env: Any) -> None:
    request = AWSRequest(
        method="POST",
        url=env.api_url,
        data=b"{}",
        headers={"Content-Type": "application/x-amz-json-1.1", "X-Amz-Target": "RekognitionService.ListCollections"},
    )
    SigV4Auth(Credentials("test", "test"), "lambda", env.region).add_auth(request)
    tampered = b'{"MaxResults": 1}'
    sent = urllib.request.Request(env.api_url, data=tampered, headers=dict(request.headers.items()), method="POST")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(sent, timeout=30)
    assert refused.value.code == 403
    assert json.loads(refused.value.read())["__type"] == "InvalidSignatureException"


# --- `candor up` and the CLI's admin commands -------------------------------------------------------------

ROOT = Path(__file__).resolve().parents[1]


def _candor_up(cache: Path, data_dir: Path, model_dir: Path) -> tuple[subprocess.Popen[str], dict[str, str]]:
    """`candor up --data DIR` in a process of its own; the lines it prints on stdout, in order."""
    env = {**os.environ, "XDG_CACHE_HOME": str(cache), "MODEL_DIR": str(model_dir), "CANDOR_STACK": "signed"}
    for name in ("AWS_ENDPOINT_URL", "CANDOR_API", *ADMIN_VARIABLES):
        env.pop(name, None)
    process = subprocess.Popen(
        [sys.executable, "-m", "candor_local.cli.main", "up", "--data", str(data_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
        cwd=ROOT,
    )
    assert process.stdout is not None
    lines = [process.stdout.readline().strip() for _ in range(5)]
    return process, dict(line.split("=", 1) for line in lines if "=" in line) | {"order": ",".join(lines)}


def _stop(process: subprocess.Popen[str]) -> None:
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=60)


@pytest.mark.integration
def test_candor_up_prints_the_admin_pair_and_the_cli_administers_with_it(
    tmp_path: Path, model_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from candor_local.cli import connection
    from candor_local.cli import main as cli

    cache, data_dir = tmp_path / "cache", tmp_path / "data"
    process, printed = _candor_up(cache, data_dir, model_dir)
    try:
        names = [line.split("=", 1)[0] for line in printed["order"].split(",")]
        assert names == [
            "AWS_ENDPOINT_URL",
            "CANDOR_API",
            "CANDOR_ADMIN_API",
            "CANDOR_ADMIN_ACCESS_KEY_ID",
            "CANDOR_ADMIN_SECRET_ACCESS_KEY",
        ], printed
        assert printed["CANDOR_ADMIN_API"] != printed["CANDOR_API"]
        assert printed["CANDOR_ADMIN_ACCESS_KEY_ID"].startswith("CANDORADMIN")
        state_file = cache / "candor" / "up.json"
        assert state_file.stat().st_mode & 0o077 == 0
        state = json.loads(state_file.read_text())
        assert state["admin_api_url"].rstrip("/") == printed["CANDOR_ADMIN_API"]
        assert state["admin_secret_access_key"] == printed["CANDOR_ADMIN_SECRET_ACCESS_KEY"]

        monkeypatch.setattr(connection, "STATE_FILE", state_file)
        for name in ("AWS_ENDPOINT_URL", "CANDOR_API", "CANDOR_PURPOSE", "CANDOR_CASE", *ADMIN_VARIABLES):
            monkeypatch.delenv(name, raising=False)
        assert cli.main(["collections", "create", "cases", "--purpose", "fraud"]) == 0
        assert cli.main(["collections", "policy", "cases", "--min-threshold", "90"]) == 0
        assert "match threshold at least 90" in capsys.readouterr().out
        assert cli.main(["collections", "policy", "cases", "--json"]) == 0  # read on the face API
        assert json.loads(capsys.readouterr().out)["Policy"]["Purposes"] == ["fraud"]

        monkeypatch.setenv("CANDOR_ADMIN_SECRET_ACCESS_KEY", "not-the-secret")
        assert cli.main(["collections", "delete", "cases"]) == 1
        assert "InvalidSignatureException" in capsys.readouterr().err
        monkeypatch.setenv("CANDOR_ADMIN_ACCESS_KEY_ID", "test")
        monkeypatch.setenv("CANDOR_ADMIN_SECRET_ACCESS_KEY", "test")
        assert cli.main(["collections", "delete", "cases"]) == 1
        refused = capsys.readouterr().err
        assert "AccessDeniedException" in refused and "FaceApiSearchRole" in refused
        for name in ADMIN_VARIABLES:
            monkeypatch.delenv(name, raising=False)
        assert cli.main(["collections", "delete", "cases"]) == 0
    finally:
        _stop(process)

    # A restart with the same data directory keeps the ports and the admin pair.
    process, again = _candor_up(cache, data_dir, model_dir)
    try:
        assert again == printed
    finally:
        _stop(process)


@pytest.mark.integration
def test_per_caller_quotas_count_per_key(env: Any, faces_dir: Path) -> None:
    admin = env.admin_credentials
    collection = "signed-quotas"
    policy = {"CollectionId": collection, "Policy": {"SearchesPerCallerPerMinute": 1}}
    status, _ = _call(
        env, env.admin_url, "CandorService.CreateCollection", policy, admin.access_key_id, admin.secret_access_key
    )
    assert status == 200
    enrolling = _rekognition(env, env.api_url, "test", "test")
    enrolling.meta.events.register(
        "before-sign.rekognition", lambda request, **_: request.headers.__setitem__("X-Candor-Consent", "FORM-1")
    )
    face_ids = [
        enrolling.index_faces(
            CollectionId=collection,
            Image={"Bytes": (faces_dir / "enroll" / "obama" / name).read_bytes()},
            ExternalImageId="obama",
        )["FaceRecords"][0]["Face"]["FaceId"]
        for name in ("obama.jpg", "obama2.jpg")
    ]
    alice, bob = (_rekognition(env, env.api_url, c.access_key_id, c.secret_access_key) for c in (ALICE, BOB))
    # One person a minute for each key; the minute may turn between calls, so try again once if it did.
    for _ in range(2):
        minute = int(time.time()) // 60
        outcomes = []
        for client in (alice, alice, bob):
            try:
                found = client.search_faces(CollectionId=collection, FaceId=face_ids[0])
                outcomes.append(len(found["FaceMatches"]))
            except ClientError as error:
                outcomes.append(error.response["Error"]["Code"])
        if int(time.time()) // 60 == minute:
            break
    assert outcomes == [1, "LimitExceededException", 1]


def test_the_cli_shows_a_pending_loosening_with_when_it_takes_effect(capsys: pytest.CaptureFixture[str]) -> None:
    from argparse import Namespace

    from candor_local.cli import face_api

    policy = {
        "Purposes": ["fraud"],
        "Identification": False,
        "MinFaceMatchThreshold": 90,
        "SearchesPerCallerPerMinute": 60,
        "SearchesPerMinute": 600,
    }
    pending = {
        "Policy": {**policy, "Purposes": ["fraud", "general"]},
        "EffectiveAt": datetime(2026, 12, 7, 2, 0, tzinfo=UTC).timestamp(),
        "RequestedBy": "arn:aws:sts::000000000000:assumed-role/candor-PolicyAdminRole/CANDORADMINX",
        "Loosens": ["adds the purpose(s) general"],
    }

    class Client:
        def call(self, target: str, request: dict[str, Any]) -> dict[str, Any]:
            assert target == "CandorService.DescribeCollectionPolicy"
            return {"Policy": policy, "PendingPolicy": pending}

    args = Namespace(
        collection="cases",
        json=False,
        purposes=None,
        identification=None,
        min_threshold=None,
        searches_per_caller=None,
        searches_per_minute=None,
        max_false_match_risk=None,
    )
    face_api.cmd_collection_policy(args, Client())  # type: ignore[arg-type]
    lines = capsys.readouterr().out.splitlines()
    assert lines[5] == (
        "  pending, in force from 2026-12-07 02:00 UTC (requested by "
        "arn:aws:sts::000000000000:assumed-role/candor-PolicyAdminRole/CANDORADMINX): adds the purpose(s) general"
    )
    assert lines[6] == "    purposes: fraud, general"
