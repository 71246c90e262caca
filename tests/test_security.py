"""Least privilege derived from the code, no secrets in the repository, pinned dependencies.

Least privilege: every boto3 call lives in candor/adapters/aws.py, so the actions an adapter can perform are
read from its source (a table of boto3 method -> IAM action), and the resources a function reaches are read
from its handler (which adapter it builds on which `settings.<name>`, i.e. which environment variable, i.e.
which template resource). A grant in template.yaml that no adapter the function wires can use, on that
resource, fails the test; so does a wired resource with no grant at all.
"""

from __future__ import annotations

import ast
import re
import subprocess
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from candor_local.emulator.template import load_yaml

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT / "layers" / "shared" / "python"
ADAPTERS = SHARED / "candor" / "adapters" / "aws.py"

# boto3 method (on a client, a Table or a Bucket) -> the IAM action it needs.
BOTO3_ACTIONS = {
    "get_item": "dynamodb:GetItem",
    "put_item": "dynamodb:PutItem",
    "update_item": "dynamodb:UpdateItem",
    "delete_item": "dynamodb:DeleteItem",
    "query": "dynamodb:Query",
    "scan": "dynamodb:Scan",
    "batch_writer": "dynamodb:BatchWriteItem",
    "batch_get_item": "dynamodb:BatchGetItem",
    "get_object": "s3:GetObject",
    "get_object_tagging": "s3:GetObjectTagging",
    "put_object_tagging": "s3:PutObjectTagging",
    "download_file": "s3:GetObject",
    "head_object": "s3:GetObject",
    "put_object": "s3:PutObject",
    "upload_file": "s3:PutObject",
    "delete_object": "s3:DeleteObject",
    "delete_objects": "s3:DeleteObject",
    "list_objects_v2": "s3:ListBucket",
    "send_message": "sqs:SendMessage",
    "change_message_visibility": "sqs:ChangeMessageVisibility",
    "invoke": "lambda:InvokeFunction",
    "create_index": "s3vectors:CreateIndex",
    "delete_index": "s3vectors:DeleteIndex",
    "get_index": "s3vectors:GetIndex",
    "put_vectors": "s3vectors:PutVectors",
    "delete_vectors": "s3vectors:DeleteVectors",
    # A metadata filter (every query has one) or returned metadata needs GetVectors too (the API reference).
    "get_vectors": "s3vectors:GetVectors",
    "list_vectors": "s3vectors:ListVectors",
    "query_vectors": "s3vectors:QueryVectors",
    "sign": "kms:Sign",
    "get_public_key": "kms:GetPublicKey",
    "list_object_versions": "s3:ListBucketVersions",
    "assume_role": "sts:AssumeRole",
}
# Resources a function wires only as a fallback it never takes: YuNet ships in the model layer, so Detect never
# fetches from the model bucket (Embed and Search do: FaceNet is too big for the layer).
NEVER_REACHED = {"DetectFunction": {"ModelBucket"}}
# What a function reaches through a name its input carries, not its settings: the video a job names (in the
# uploads), and the caller's role the completion message is published as (Rekognition's NotificationChannel)
# or a stream processor's records are written as (its RoleArn).
REACHED_BY_INPUT = {
    "VideoFunction": {
        "UploadBucket": {"s3:GetObject"},
        "arn:${AWS::Partition}:iam::${AWS::AccountId}:role/*": {"sts:AssumeRole"},
    },
    # A stream processor's output records are put on the caller's stream as the caller's RoleArn.
    "LiveFunction": {"arn:${AWS::Partition}:iam::${AWS::AccountId}:role/*": {"sts:AssumeRole"}},
}
# An image store is built without a bucket: it reads the photo an event or a request names, i.e. the uploads.
UNBOUND_RESOURCE_ENV = {"S3ImageStore": "UPLOAD_BUCKET"}


def _adapter_actions() -> dict[str, dict[str, set[str]]]:
    """adapter (class or module-level function) -> its method name ("" for a function) -> IAM actions."""
    tree = ast.parse(ADAPTERS.read_text(encoding="utf-8"))
    functions = {node.name: node for node in tree.body if isinstance(node, ast.FunctionDef)}

    classes = {node.name: node for node in tree.body if isinstance(node, ast.ClassDef)}

    def actions_of(node: ast.AST, methods: dict[str, ast.FunctionDef], seen: set[str]) -> set[str]:
        found: set[str] = set()
        # put_item on a batch_writer's batch is part of the BatchWriteItem call, not a PutItem of its own.
        batches = {
            item.optional_vars.id
            for n in ast.walk(node)
            if isinstance(n, ast.With)
            for item in n.items
            if isinstance(item.optional_vars, ast.Name) and "batch_writer" in ast.dump(item.context_expr)
        }
        for call in (n for n in ast.walk(node) if isinstance(n, ast.Call)):
            func = call.func
            if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and func.value.id in batches:
                continue
            name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
            if isinstance(func, ast.Name) and name in classes and name not in seen:
                # A factory function hands out the adapter it builds: it may perform what that adapter does.
                members = [m for m in classes[name].body if isinstance(m, ast.FunctionDef)]
                found |= {action for m in members for action in actions_of(m, {}, seen | {name})}
            if name == "get_paginator" and call.args and isinstance(call.args[0], ast.Constant):
                name = str(call.args[0].value)
            if name in BOTO3_ACTIONS:
                found.add(BOTO3_ACTIONS[name])
            own = isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and func.value.id == "self"
            callee = methods.get(name) if own else functions.get(name) if isinstance(func, ast.Name) else None
            if callee is not None and name not in seen:
                found |= actions_of(callee, methods, seen | {name})
        return found

    adapters: dict[str, dict[str, set[str]]] = {}
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            methods = {m.name: m for m in node.body if isinstance(m, ast.FunctionDef)}
            adapters[node.name] = {
                name: actions_of(method, methods, {name}) for name, method in methods.items() if name != "__init__"
            }
        elif isinstance(node, ast.FunctionDef) and not node.name.startswith("_"):
            adapters[node.name] = {"": actions_of(node, {}, {node.name})}
    return adapters


def _reachable_modules(service: Path) -> list[Path]:
    """The function's own modules and every candor module they import, transitively."""
    pending, seen = sorted(service.glob("*.py")), set()
    while pending:
        path = pending.pop()
        if path in seen:
            continue
        seen.add(path)
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module:
                # `from candor.core import settings` imports the module candor.core.settings
                names = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            for name in names:
                if name.startswith("candor"):
                    base = SHARED.joinpath(*name.split("."))
                    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
                        if candidate.is_file():
                            pending.append(candidate)
    return sorted(seen)


WIRING = SHARED / "candor" / "adapters" / "wiring.py"


def _called_names(modules: list[Path]) -> set[str]:
    return {
        node.func.attr
        for path in modules
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
    }


def _wired(service: Path, adapters: dict[str, Any]) -> list[tuple[str, str]]:
    """(adapter, environment variable of the resource it is bound to) for each adapter the handler builds,
    itself or through the cold-start wiring it imports (candor/adapters/wiring.py)."""
    wired = []
    wiring = [path for path in _reachable_modules(service) if path == WIRING]
    for path in [*sorted(service.glob("*.py")), *wiring]:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in adapters):
                continue
            first = node.args[0] if node.args else None
            if isinstance(first, ast.Attribute) and isinstance(first.value, ast.Name) and first.value.id == "settings":
                wired.append((node.func.id, first.attr.upper()))  # Settings.from_env: photos_table <- PHOTOS_TABLE
            elif node.func.id in UNBOUND_RESOURCE_ENV:
                wired.append((node.func.id, UNBOUND_RESOURCE_ENV[node.func.id]))
    return wired


def _logical_id(value: Any) -> str:
    """The resource a template value points at: !Ref X, !GetAtt X.Arn, !Sub "${X.Arn}/..."."""
    if isinstance(value, dict) and "Ref" in value:
        return str(value["Ref"])
    if isinstance(value, dict) and "Fn::GetAtt" in value:
        target = value["Fn::GetAtt"]
        return str(target[0] if isinstance(target, list) else str(target).split(".")[0])
    if isinstance(value, dict) and "Fn::Sub" in value:
        text = value["Fn::Sub"] if isinstance(value["Fn::Sub"], str) else value["Fn::Sub"][0]
        names = [name for name in re.findall(r"\$\{(\w+)[.}]", text) if name != "AWS"]  # not ${AWS::...}
        return names[0] if names else text
    return str(value)


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


TEMPLATE = load_yaml(ROOT / "template.yaml")
FUNCTIONS = {
    name: resource
    for name, resource in TEMPLATE["Resources"].items()
    if resource["Type"] == "AWS::Serverless::Function"
}


def _environment(function: dict[str, Any]) -> dict[str, str]:
    variables = {**TEMPLATE.get("Globals", {}).get("Function", {}).get("Environment", {}).get("Variables", {})}
    variables.update(function["Properties"].get("Environment", {}).get("Variables", {}))
    return {name: _logical_id(value) for name, value in variables.items() if isinstance(value, dict)}


def _grants(function: dict[str, Any]) -> dict[str, set[str]]:
    grants: dict[str, set[str]] = defaultdict(set)
    for policy in function["Properties"].get("Policies", []):
        for statement in policy.get("Statement", []) if isinstance(policy, dict) else []:
            if statement.get("Effect", "Allow") != "Allow":
                continue
            for resource in _as_list(statement["Resource"]):
                grants[_logical_id(resource)] |= set(_as_list(statement["Action"]))
    return grants


def _code_dir(function: dict[str, Any]) -> Path:
    """A zip function's CodeUri; a container image function's code is the folder of its Dockerfile."""
    if "CodeUri" in function["Properties"]:
        return ROOT / function["Properties"]["CodeUri"]
    return (ROOT / function["Metadata"]["Dockerfile"]).parent


@pytest.mark.parametrize("logical_id", sorted(FUNCTIONS))
def test_each_grant_is_an_action_the_functions_code_performs(logical_id: str) -> None:
    function = FUNCTIONS[logical_id]
    service = _code_dir(function)
    adapters = _adapter_actions()
    called = _called_names(_reachable_modules(service))
    environment = _environment(function)
    needed: dict[str, set[str]] = defaultdict(set)
    for adapter, variable in _wired(service, adapters):
        assert variable in environment, f"{logical_id} builds {adapter} on {variable}, which the template never sets"
        for method, actions in adapters[adapter].items():
            if method == "" or method in called:  # a method no reachable code calls needs no permission
                needed[environment[variable]] |= actions
    for resource, actions in REACHED_BY_INPUT.get(logical_id, {}).items():
        needed[resource] |= actions
    granted = _grants(function)
    wildcards = sorted(action for actions in granted.values() for action in actions if "*" in action)
    assert not wildcards, f"{logical_id} grants wildcard actions: {wildcards}"
    unused = {resource: sorted(actions - needed.get(resource, set())) for resource, actions in granted.items()}
    assert not {resource: actions for resource, actions in unused.items() if actions}, (
        f"{logical_id} grants actions its code never performs: {unused} (needed: {dict(needed)})"
    )
    ungranted = sorted(
        resource
        for resource in needed
        if not granted.get(resource) and resource not in NEVER_REACHED.get(logical_id, set())
    )
    assert not ungranted, f"{logical_id} uses {ungranted} without any grant on them"


def test_the_adapter_scan_sees_every_kind_of_call() -> None:
    """The derivation itself: helpers, paginators and batch writers count as the calls they make."""
    adapters = _adapter_actions()
    assert adapters["S3ImageStore"]["get"] == {"s3:GetObject"}
    assert adapters["DynamoFaceRepository"]["save_all"] == {"dynamodb:BatchWriteItem"}
    assert adapters["DynamoFaceRepository"]["list_collection"] == {"dynamodb:Query"}  # via _query_pages
    assert adapters["DynamoFaceRepository"]["existing"] == {"dynamodb:BatchGetItem"}
    assert adapters["DynamoUserRepository"]["list_page"] == {"dynamodb:Query"}  # via _query_limited
    assert adapters["SqsPublisher"]["publish"] == {"sqs:SendMessage"}


# ------------------------------------------------------------------------------------------------ secrets

# AWS access key ids, secret keys assigned in code or config, and private keys.
SECRET_PATTERNS = {
    "AWS access key id": re.compile(r"\b(?:AKIA|ASIA|ABIA|ACCA)[A-Z0-9]{16}\b"),
    "AWS secret access key": re.compile(
        r"(?i)aws.{0,20}(?:secret|private).{0,20}['\"=:\s]+[A-Za-z0-9/+]{40}(?![A-Za-z0-9/+])"
    ),
    "private key": re.compile(r"-----BEGIN (?:RSA |EC |OPENSSH |DSA )?PRIVATE KEY-----"),
}
# AWS's documented example key, which is not a credential.
ALLOWED = {"AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"}


def _repository_files() -> list[Path]:
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    return [ROOT / name for name in listed if (ROOT / name).is_file()]


def test_no_credentials_or_keys_in_the_repository() -> None:
    found = []
    for path in _repository_files():
        if path.stat().st_size > 2_000_000:
            continue
        text = path.read_bytes().decode("utf-8", errors="ignore")
        for what, pattern in SECRET_PATTERNS.items():
            for match in pattern.finditer(text):
                if not any(allowed in match.group(0) for allowed in ALLOWED):
                    found.append(f"{path.relative_to(ROOT)}: {what}")
    assert not found, found


def test_the_secret_scan_catches_a_key() -> None:
    fake_id = "AKIA" + "Q3EXAMPLEQ3EXAMP"
    fake_secret = "aws_secret_access_key = " + "Zx9" * 13 + "Z"
    assert SECRET_PATTERNS["AWS access key id"].search(fake_id)
    assert SECRET_PATTERNS["AWS secret access key"].search(fake_secret)


# ------------------------------------------------------------------------------------------- dependencies


def test_every_dependency_is_pinned_to_one_version() -> None:
    loose = []
    for path in sorted((ROOT / "requirements").glob("*.txt")):
        for line in path.read_text(encoding="utf-8").splitlines():
            line = line.split("#", 1)[0].strip()
            if not line or line.startswith("-r "):
                continue
            if not re.fullmatch(r"[A-Za-z0-9_.\-]+(\[[A-Za-z0-9_,.\-]+\])?==[A-Za-z0-9_.+\-]+", line):
                loose.append(f"{path.name}: {line}")
    assert not loose, loose
