"""Pointing the CLI at a stack `sam deploy` made: its names come from the stack's outputs, and the face API's
requests are signed as an IAM Function URL wants them (SigV4 for the service "lambda")."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import boto3
import botocore.auth
import pytest
from moto import mock_aws

from candor_local.cli.client import CandorClient, StackEndpoints, deployed_stack

ROOT = Path(__file__).resolve().parents[1]
URL = "https://abcdefghijklmnopqrstuvwxyz012345.lambda-url.eu-west-1.on.aws/"


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(name, "testing")


def test_a_deployed_stack_is_found_by_its_outputs(aws: None) -> None:
    outputs = {"SearchFunctionUrl": URL, "UploadBucketName": "uploads", "PhotosTableName": "photos"}
    template = {
        "Resources": {"Placeholder": {"Type": "AWS::SQS::Queue"}},
        "Outputs": {name: {"Value": value} for name, value in outputs.items()},
    }
    with mock_aws():
        boto3.client("cloudformation").create_stack(StackName="candor", TemplateBody=json.dumps(template))
        stack = deployed_stack("candor")
    assert stack == StackEndpoints(None, URL, "uploads", "photos", "eu-west-1")


def test_the_face_api_is_signed_for_lambda(aws: None, monkeypatch: pytest.MonkeyPatch) -> None:
    signed: list[tuple[str, str]] = []

    def record(auth: botocore.auth.SigV4Auth, request: object) -> None:
        signed.append((auth._service_name, auth._region_name))
        raise RuntimeError("signed")  # nothing is sent

    monkeypatch.setattr(botocore.auth.SigV4Auth, "add_auth", record)
    client = CandorClient(StackEndpoints(None, URL, "uploads", "photos", "eu-west-1"))
    with pytest.raises(RuntimeError, match="signed"):
        client.ensure_collection("staff")
    assert signed == [("lambda", "eu-west-1")]


def test_samconfig_deploys_with_the_iam_capability_and_a_managed_artefact_bucket() -> None:
    config = tomllib.loads((ROOT / "samconfig.toml").read_text(encoding="utf-8"))
    deploy = config["default"]["deploy"]["parameters"]
    assert deploy["capabilities"] == "CAPABILITY_IAM" and deploy["resolve_s3"] is True
    assert config["default"]["validate"]["parameters"]["lint"] is True
