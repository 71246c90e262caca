"""Which stack the CLI's commands talk to: the one `candor up` runs (its state file), a deployed one, or
AWS_ENDPOINT_URL's; shared by every command group."""

from __future__ import annotations

import json
import os
import urllib.parse
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

import boto3

from candor_local.cli.client import StackEndpoints, deployed_stack
from candor_local.emulator.moto_server import EMULATOR_CREDENTIALS

STATE_FILE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "candor" / "up.json"


# Set in the shell, these take precedence over the state file and a deployed stack's outputs.
ADMIN_VARIABLES = {
    "CANDOR_ADMIN_API": "admin_api_url",
    "CANDOR_ADMIN_ACCESS_KEY_ID": "admin_access_key_id",
    "CANDOR_ADMIN_SECRET_ACCESS_KEY": "admin_secret_access_key",
}


def save_state(stack: StackEndpoints) -> None:
    """The stack `candor up` runs, for the other commands; readable by its owner only (it holds the admin key)."""
    STATE_FILE.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(STATE_FILE, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        json.dump(stack.__dict__, handle)
    STATE_FILE.chmod(0o600)  # a file an older version wrote keeps its mode through os.open


def _admin_overrides() -> dict[str, str]:
    return {field: os.environ[name] for name, field in ADMIN_VARIABLES.items() if os.environ.get(name)}


def connected_stack() -> StackEndpoints:
    """A deployed stack named by CANDOR_DEPLOYED_STACK (read from its CloudFormation outputs), else the stack
    `candor up` is running (its state file); CANDOR_API / AWS_ENDPOINT_URL and the CANDOR_ADMIN_* variables
    take precedence."""
    deployed = os.environ.get("CANDOR_DEPLOYED_STACK")
    if deployed:
        stack = deployed_stack(deployed, os.environ.get("AWS_ENDPOINT_URL"))
        return replace(stack, api_url=os.environ.get("CANDOR_API", stack.api_url), **_admin_overrides())
    if not STATE_FILE.is_file():
        raise FileNotFoundError("no running stack: start one with `candor up` in another terminal")
    state = json.loads(STATE_FILE.read_text())
    state["api_url"] = os.environ.get("CANDOR_API", state["api_url"])
    state["endpoint_url"] = os.environ.get("AWS_ENDPOINT_URL", state["endpoint_url"])
    return StackEndpoints(**{**state, **_admin_overrides()})


def stack_session() -> tuple[boto3.session.Session, str | None]:
    """A session and endpoint for the stack on AWS_ENDPOINT_URL, or the one `candor up` runs, or AWS itself."""
    endpoint = os.environ.get("AWS_ENDPOINT_URL")
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if endpoint is None and STATE_FILE.is_file():
        state = json.loads(STATE_FILE.read_text())
        endpoint, region = state.get("endpoint_url"), region or state.get("region")
    session = boto3.session.Session(region_name=region or "us-east-1")
    if session.get_credentials() is None and is_loopback(endpoint):
        session = boto3.session.Session(
            aws_access_key_id=EMULATOR_CREDENTIALS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=EMULATOR_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
            region_name=region or "us-east-1",
        )
    return session, endpoint


def physical_ids(cloudformation: Any, stack_name: str) -> dict[str, str]:
    paginator = cloudformation.get_paginator("list_stack_resources")
    pages: Iterable[dict[str, Any]] = paginator.paginate(StackName=stack_name)
    return {
        summary["LogicalResourceId"]: summary["PhysicalResourceId"]
        for page in pages
        for summary in page["StackResourceSummaries"]
        if summary.get("PhysicalResourceId")
    }


def is_loopback(url: str | None) -> bool:
    return bool(url) and urllib.parse.urlsplit(url).hostname in ("127.0.0.1", "localhost", "::1")
