"""A Lambda Function URL on 127.0.0.1: each HTTP request becomes a payload format 2.0 event, the handler's
result becomes the HTTP response, as the Function URL service does it.

Authentication: with AuthType AWS_IAM a request must carry a SigV4 signature in its Authorization header,
and it is verified as AWS verifies it, against the local credentials (local_credentials.py: key id ->
secret -> role). botocore's own signer recomputes the signature over the request as it came (method, path,
query, exactly the headers SignedHeaders names, the body, and the request's own X-Amz-Date), for the
credential's secret. Each refusal is a 403 with the JSON body AWS sends (`Message`, and `__type` and
x-amzn-ErrorType where AWS names the error):

- no signature: `Forbidden`;
- a key id the stack does not know: UnrecognizedClientException;
- a scope other than the URL's region and the service `lambda` (or `rekognition`, what a plain boto3
  Rekognition client signs for): InvalidSignatureException;
- a signature that does not match (a wrong secret, a changed body, header or path): InvalidSignatureException;
- an X-Amz-Date more than 15 minutes from now: InvalidSignatureException, `Signature expired` (or `not yet
  current`);
- a known key whose role the template does not let invoke this URL: AccessDeniedException, naming the role
  and the function. A URL holds only the secrets of the roles that may invoke it, so this is answered from
  the key id, before its signature is checked.

Presigned URLs (a signature in the query string) are refused with a message saying so: no client of the
face API sends them. The handler sees the caller as the role's session, `arn:aws:sts::<account>:assumed-
role/<role name>/<key id>`, the same for every request signed with that key, so per-caller quotas count per
key. `invoke_function_url` signs a request with boto3's credentials.

Limits, as the Function URL service applies them before the function runs: a request body over 6 MB gets
413, and a Content-Length that is not a number gets 400, each with a JSON body that says why.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import re
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import boto3
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.compat import HTTPHeaders
from botocore.credentials import Credentials

from candor_local.emulator.worker_config import LocalCredential, UrlConfig

logger = logging.getLogger("candor_local.emulator.function_url")

# Bodies of these content types reach the handler as text; every other body is base64 (isBase64Encoded).
_TEXT_TYPES = (
    "text/",
    "application/json",
    "application/xml",
    "application/javascript",
    "application/x-www-form-urlencoded",
    "application/yaml",
)
_TEXT_SUFFIXES = ("+json", "+xml")
# Lambda's invocation payload limit, which a Function URL applies to the request body.
MAX_REQUEST_BYTES = 6 * 1024 * 1024
# An oversized body is read (and dropped) up to this much, so that the client hears the 413 rather than a reset.
_MAX_DRAINED_BYTES = 64 * 1024 * 1024
# IAM's AccessKeyId: 16 to 128 word characters on AWS; shorter ones are let through for local test keys.
_ACCESS_KEY_ID = re.compile(r"\w{1,128}", re.ASCII)
_ALGORITHM = "AWS4-HMAC-SHA256"
_AMZ_DATE = "%Y%m%dT%H%M%SZ"
# How far a request's X-Amz-Date may be from the server's clock, as AWS allows.
SIGNATURE_SKEW = timedelta(minutes=15)
# What a Function URL checks signatures for is "lambda"; a plain boto3 Rekognition client signs for
# "rekognition", and the face API promises that such a client works here unchanged, so both verify.
_SIGNING_SERVICES = ("lambda", "rekognition")
_MISMATCH = (
    "The request signature we calculated does not match the signature you provided. Check your AWS Secret "
    "Access Key and signing method. Consult the service documentation for details."
)


class SignatureRefused(Exception):
    """Why a request is not let through to the function: the status, the error type (None: AWS names
    none) and the message AWS answers with."""

    def __init__(self, message: str, error_type: str | None = None, status: int = 403) -> None:
        super().__init__(message)
        self.message, self.error_type, self.status = message, error_type, status


@dataclass(frozen=True)
class _Authorization:
    key_id: str
    scope: list[str]  # date, region, service, aws4_request
    signed_headers: list[str]
    signature: str


class _SignedAsSent(SigV4Auth):
    """botocore's SigV4 signer over exactly the headers the client signed: the rebuilt request holds
    those only, and none is dropped (botocore leaves out user-agent, for one) or added."""

    def headers_to_sign(self, request: AWSRequest) -> HTTPHeaders:
        return request.headers


def _parse_authorization(value: str) -> _Authorization:
    algorithm, _, rest = value.strip().partition(" ")
    if algorithm != _ALGORITHM:
        raise SignatureRefused(
            f"Unsupported signature algorithm {algorithm[:40]!r}: sign with {_ALGORITHM}",
            "IncompleteSignatureException",
        )
    fields = {}
    for part in rest.split(","):
        name, _, field_value = part.strip().partition("=")
        fields[name] = field_value
    missing = [name for name in ("Credential", "SignedHeaders", "Signature") if not fields.get(name)]
    if missing:
        raise SignatureRefused(
            f"Authorization header requires {', '.join(repr(name) for name in missing)} parameter(s). "
            f"Authorization={value[:80]}",
            "IncompleteSignatureException",
        )
    key_id, *scope = fields["Credential"].split("/")
    if not _ACCESS_KEY_ID.fullmatch(key_id) or len(scope) != 4:
        raise SignatureRefused("Forbidden: the signature's Credential does not name an AWS access key id")
    return _Authorization(key_id, scope, fields["SignedHeaders"].lower().split(";"), fields["Signature"])


def caller_arn(config: UrlConfig, credential: LocalCredential) -> str:
    """The caller as AWS names a role's session: one ARN per key id."""
    return f"arn:aws:sts::{config.account_id}:assumed-role/{credential.role_name}/{credential.access_key_id}"


def authenticate(
    config: UrlConfig,
    region: str,
    method: str,
    target: str,
    headers: list[tuple[str, str]],
    body: bytes,
    now: datetime | None = None,
) -> LocalCredential:
    """The local credential a request was signed with, once its signature is verified and its role may
    invoke this URL; raises SignatureRefused with AWS's answer otherwise."""
    lowered = [(name.lower(), value) for name, value in headers]
    first = {name: value for name, value in reversed(lowered)}
    params = dict(parse_qsl(urlsplit(target).query, keep_blank_values=True))
    if "X-Amz-Signature" in params or "X-Amz-Credential" in params:
        raise SignatureRefused(
            "Forbidden: presigned requests are not accepted by the local Function URLs; sign with an "
            "Authorization header (botocore's SigV4Auth, service lambda)"
        )
    if "authorization" not in first:
        raise SignatureRefused("Forbidden")
    authorization = _parse_authorization(first["authorization"])
    key_id = authorization.key_id
    credential = next((c for c in config.credentials if c.access_key_id == key_id), None)
    if credential is None and key_id not in config.other_keys:
        raise SignatureRefused("The security token included in the request is invalid.", "UnrecognizedClientException")
    scope_date, scope_region, service, terminator = authorization.scope
    if service not in _SIGNING_SERVICES or terminator != "aws4_request":
        raise SignatureRefused(
            f"Credential should be scoped to correct service: '{_SIGNING_SERVICES[0]}'.", "InvalidSignatureException"
        )
    if scope_region != region:
        raise SignatureRefused("Credential should be scoped to a valid region.", "InvalidSignatureException")
    amz_date = first.get("x-amz-date", "")
    try:
        signed_at = datetime.strptime(amz_date, _AMZ_DATE).replace(tzinfo=UTC)
    except ValueError:
        raise SignatureRefused(
            "Authorization header requires existence of a valid 'X-Amz-Date' header.", "IncompleteSignatureException"
        ) from None
    if scope_date != amz_date[:8]:
        raise SignatureRefused(
            "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from HTTP: "
            f"'{scope_date[:8]}' != '{amz_date[:8]}', from '{amz_date}'.",
            "InvalidSignatureException",
        )
    now = now or datetime.now(UTC)
    if signed_at < now - SIGNATURE_SKEW:
        earliest = (now - SIGNATURE_SKEW).strftime(_AMZ_DATE)
        raise SignatureRefused(
            f"Signature expired: {amz_date} is now earlier than {earliest} ({now.strftime(_AMZ_DATE)} - 15 min.)",
            "InvalidSignatureException",
        )
    if signed_at > now + SIGNATURE_SKEW:
        latest = (now + SIGNATURE_SKEW).strftime(_AMZ_DATE)
        raise SignatureRefused(
            f"Signature not yet current: {amz_date} is still later than {latest} ({now.strftime(_AMZ_DATE)} + 15 min.)",
            "InvalidSignatureException",
        )
    if credential is None:
        role = config.other_keys[key_id]
        user = f"arn:aws:sts::{config.account_id}:assumed-role/{role}/{key_id}"
        raise SignatureRefused(
            f"User: {user} is not authorized to perform: lambda:InvokeFunctionUrl on resource: "
            f"{config.function_arn} because no identity-based policy of role {role} allows the "
            "lambda:InvokeFunctionUrl action",
            "AccessDeniedException",
        )
    signed = authorization.signed_headers
    unsigned = [name for name in ("host", "x-amz-date") if name not in signed]
    if unsigned:
        raise SignatureRefused(
            f"'{unsigned[0]}' must be a signed header; SignedHeaders={';'.join(signed)}", "InvalidSignatureException"
        )
    if absent := [name for name in signed if name not in first]:
        raise SignatureRefused(
            f"SignedHeaders names '{absent[0]}', which the request does not carry", "InvalidSignatureException"
        )
    declared_hash = first.get("x-amz-content-sha256")
    if declared_hash is not None and declared_hash != hashlib.sha256(body).hexdigest():
        raise SignatureRefused(
            "The provided 'x-amz-content-sha256' header does not match what was computed.", "InvalidSignatureException"
        )
    request = AWSRequest(method=method, url=f"http://{first['host']}{target}", data=body)
    for name, value in lowered:
        if name in signed:
            request.headers[name] = value
    request.context["timestamp"] = amz_date
    signer = _SignedAsSent(Credentials(credential.access_key_id, credential.secret_access_key), service, region)
    expected = signer.signature(signer.string_to_sign(request, signer.canonical_request(request)), request)
    if not hmac.compare_digest(expected, authorization.signature):
        raise SignatureRefused(_MISMATCH, "InvalidSignatureException")
    return credential


def _is_text(content_type: str) -> bool:
    media_type = content_type.split(";", 1)[0].strip().lower()
    return media_type.startswith(_TEXT_TYPES) or media_type.endswith(_TEXT_SUFFIXES)


def build_event(
    method: str,
    target: str,
    headers: list[tuple[str, str]],
    body: bytes,
    source_ip: str,
    config: UrlConfig,
    region: str,
    caller: LocalCredential | None = None,
) -> dict[str, Any]:
    """The Function URL event (payload format 2.0) for one HTTP request."""
    split = urlsplit(target)
    merged: dict[str, str] = {}
    cookies: list[str] = []
    for name, value in headers:
        key = name.lower()
        if key == "cookie":
            cookies.extend(part.strip() for part in value.split(";") if part.strip())
            continue
        merged[key] = f"{merged[key]},{value}" if key in merged else value
    query: dict[str, str] = {}
    for name, value in parse_qsl(split.query, keep_blank_values=True):
        query[name] = f"{query[name]},{value}" if name in query else value

    url_id = f"local{config.port}"
    now = datetime.now(UTC)
    request_context: dict[str, Any] = {
        "accountId": "anonymous" if config.auth_type == "NONE" else config.account_id,
        "apiId": url_id,
        "domainName": merged.get("host", f"{config.host}:{config.port}"),
        "domainPrefix": url_id,
        "http": {
            "method": method,
            "path": split.path or "/",
            "protocol": "HTTP/1.1",
            "sourceIp": source_ip,
            "userAgent": merged.get("user-agent", ""),
        },
        "requestId": str(uuid.uuid4()),
        "routeKey": "$default",
        "stage": "$default",
        "time": now.strftime("%d/%b/%Y:%H:%M:%S +0000"),
        "timeEpoch": int(time.time() * 1000),
    }
    if config.auth_type == "AWS_IAM" and caller is not None:
        # As AWS reports a role's session: the role's id and the session name (here the key id) in userId.
        session = f"{caller.role_name}:{caller.access_key_id}"
        request_context["authorizer"] = {
            "iam": {
                "accessKey": caller.access_key_id,
                "accountId": config.account_id,
                "callerId": session,
                "cognitoIdentity": None,
                "principalOrgId": None,
                "userArn": caller_arn(config, caller),
                "userId": session,
            }
        }
    event: dict[str, Any] = {
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": split.path or "/",
        "rawQueryString": split.query,
        "headers": merged,
        "requestContext": request_context,
        "isBase64Encoded": False,
    }
    if cookies:
        event["cookies"] = cookies
    if query:
        event["queryStringParameters"] = query
    if body:
        if _is_text(merged.get("content-type", "")):
            try:
                event["body"] = body.decode("utf-8")
            except UnicodeDecodeError:
                event["body"], event["isBase64Encoded"] = base64.b64encode(body).decode(), True
        else:
            event["body"], event["isBase64Encoded"] = base64.b64encode(body).decode(), True
    return event


def http_response(result: Any) -> tuple[int, list[tuple[str, str]], bytes]:
    """The HTTP response for a handler's result: a dict with statusCode is used as it is; anything else
    is returned as a JSON body with status 200, as Function URLs infer it."""
    if isinstance(result, dict) and "statusCode" in result:
        headers = [(str(k), str(v)) for k, v in (result.get("headers") or {}).items()]
        headers.extend(("Set-Cookie", str(cookie)) for cookie in result.get("cookies") or [])
        body = result.get("body") or ""
        payload = base64.b64decode(body) if result.get("isBase64Encoded") else str(body).encode("utf-8")
        return int(result["statusCode"]), headers, payload
    return 200, [("Content-Type", "application/json")], json.dumps(result).encode("utf-8")


class FunctionUrlServer:
    """ThreadingHTTPServer in the worker process; the invoker runs one event at a time."""

    def __init__(self, config: UrlConfig, invoke: Callable[[Any], Any], region: str) -> None:
        handler_class = _request_handler(config, invoke, region)
        self._server = ThreadingHTTPServer((config.host, config.port), handler_class)
        self._server.daemon_threads = True

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def serve_forever(self) -> None:
        self._server.serve_forever(poll_interval=0.2)

    def shutdown(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _request_handler(config: UrlConfig, invoke: Callable[[Any], Any], region: str) -> type[BaseHTTPRequestHandler]:
    class FunctionUrlRequestHandler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "candor-local-function-url"

        def _handle(self) -> None:
            declared = (self.headers.get("Content-Length") or "0").strip()
            if not (declared.isascii() and declared.isdigit()):
                # Where this body ends cannot be known: answer, then close the connection.
                self.close_connection = True
                self._refuse(400, f"Content-Length must be a number of bytes, not {declared[:40]!r}")
                return
            length = int(declared)
            if length > MAX_REQUEST_BYTES:
                self._drain(length)
                self._refuse(
                    413,
                    f"Request must be smaller than {MAX_REQUEST_BYTES} bytes for the InvokeFunction operation",
                    error_type="RequestEntityTooLargeException",
                )
                return
            body = self.rfile.read(length) if length else b""
            headers = [(k, v) for k, v in self.headers.items()]
            caller = None
            if config.auth_type == "AWS_IAM":
                try:
                    caller = authenticate(config, region, self.command, self.path, headers, body)
                except SignatureRefused as refused:
                    self._refuse(refused.status, refused.message, refused.error_type)
                    return
            event = build_event(self.command, self.path, headers, body, self.client_address[0], config, region, caller)
            try:
                status, response_headers, payload = http_response(invoke(event))
            except Exception:
                logger.exception("invocation failed")
                self._send(502, [("Content-Type", "application/json")], b'{"Message":"Internal Server Error"}')
                return
            self._send(status, response_headers, payload)

        def _drain(self, length: int) -> None:
            """Reads a body that is refused, so that the client, still sending it, gets the answer."""
            remaining = min(length, _MAX_DRAINED_BYTES)
            while remaining > 0:
                chunk = self.rfile.read(min(remaining, 1024 * 1024))
                if not chunk:
                    break
                remaining -= len(chunk)
            if length > _MAX_DRAINED_BYTES:
                self.close_connection = True

        def _refuse(self, status: int, message: str, error_type: str | None = None) -> None:
            headers, body = [("Content-Type", "application/json")], {"Message": message}
            if error_type:  # in the body too: boto3 reads a JSON error's code from `__type`
                headers.append(("x-amzn-ErrorType", error_type))
                body["__type"] = error_type
            if self.close_connection:
                headers.append(("Connection", "close"))
            self._send(status, headers, json.dumps(body).encode())

        def _send(self, status: int, headers: list[tuple[str, str]], payload: bytes) -> None:
            self.send_response(status)
            names = {name.lower() for name, _ in headers}
            for name, value in headers:
                self.send_header(name, value)
            if "content-length" not in names:
                self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(payload)

        def log_message(self, format: str, *args: Any) -> None:
            logger.debug("%s %s", self.client_address[0], format % args)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _handle

    return FunctionUrlRequestHandler


def invoke_function_url(
    url: str,
    method: str = "GET",
    body: bytes | str | None = None,
    headers: Mapping[str, str] | None = None,
    session: boto3.session.Session | None = None,
    region: str | None = None,
    timeout_s: float = 60.0,
) -> tuple[int, dict[str, str], bytes]:
    """Send a SigV4-signed request (service `lambda`) to a Function URL, local or on AWS; returns
    (status, headers, body). Credentials and region come from the boto3 session."""
    session = session or boto3.session.Session()
    credentials = session.get_credentials()
    if credentials is None:
        raise RuntimeError("no AWS credentials to sign the Function URL request with")
    data = body.encode("utf-8") if isinstance(body, str) else (body or b"")
    request = AWSRequest(method=method, url=url, data=data, headers=dict(headers or {}))
    SigV4Auth(credentials.get_frozen_credentials(), "lambda", region or session.region_name or "us-east-1").add_auth(
        request
    )
    prepared = urllib.request.Request(url, data=data or None, method=method, headers=dict(request.headers.items()))
    try:
        with urllib.request.urlopen(prepared, timeout=timeout_s) as response:
            return response.status, dict(response.headers.items()), response.read()
    except urllib.error.HTTPError as error:
        error_headers: Message = error.headers
        return error.code, dict(error_headers.items()), error.read()
