"""What tests that call handlers or the face API need again and again: Lambda's context object, and a boto3
rekognition client of the local runtime that states a consent reference with each request."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

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
