"""What tests that call handlers, the face API or the CLI need again and again: Lambda's context object, a
boto3 rekognition client of the local runtime that states a consent reference with each request, and the
CLI's connection to a local runtime as `candor up` leaves it."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

REGION, ACCOUNT = "us-east-1", "123456789012"


def lambda_context(function: str) -> SimpleNamespace:
    """The context Lambda passes a handler (the attributes Powertools reads)."""
    return SimpleNamespace(
        function_name=function,
        function_version="$LATEST",
        invoked_function_arn=f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{function}",
        memory_limit_in_mb=2048,
        aws_request_id="c6af9ac6-7b61-11e6-9a41-93e812345678",
        log_group_name=f"/aws/lambda/{function}",
        log_stream_name="2026/11/22/[$LATEST]abcdef",
        get_remaining_time_in_millis=lambda: 60_000,
    )


def rekognition_with_consent(env: Any, consent: str) -> Any:
    """boto3's rekognition client on a LocalEnvironment's face API, sending X-Candor-Consent (IndexFaces
    refuses an enrolment without one; boto3 has no parameter for it)."""
    client = env.session.client("rekognition", endpoint_url=env.api_url)

    def add_consent(request: Any, **_: Any) -> None:
        request.headers["X-Candor-Consent"] = consent

    client.meta.events.register("before-sign.rekognition", add_consent)
    return client


def connect_cli(env: Any, state_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI's commands talk to `env` through a state file, as after `candor up` (which writes it the same
    way); no variable of the caller's shell points them elsewhere."""
    from candor_local.cli import connection
    from candor_local.cli.client import client_for

    monkeypatch.setattr(connection, "STATE_FILE", state_file)
    connection.save_state(client_for(env).stack)
    for name in ("CANDOR_API", "AWS_ENDPOINT_URL", "CANDOR_DEPLOYED_STACK", *connection.ADMIN_VARIABLES):
        monkeypatch.delenv(name, raising=False)
