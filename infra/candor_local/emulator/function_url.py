"""A Lambda Function URL on 127.0.0.1: each HTTP request becomes a payload format 2.0 event, the handler's
result becomes the HTTP response, as the Function URL service does it.

Authentication: with AuthType AWS_IAM a request must carry a SigV4 signature (an Authorization header or a
presigned query), as on AWS, but the signature is NOT verified locally: any credentials are accepted and
the caller is reported as the key id it names. Unsigned requests get 403, as on AWS, so a client that
works here signs its requests as AWS needs; so does a key id that AWS never issues (IAM's are at most 128
letters, digits and "_"), which AWS would refuse too. `invoke_function_url` signs a request with boto3's
credentials.

Limits, as the Function URL service applies them before the function runs: a request body over 6 MB gets
413, and a Content-Length that is not a number gets 400, each with a JSON body that says why.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import boto3
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest

from candor_local.emulator.worker_config import UrlConfig

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


def _is_text(content_type: str) -> bool:
    media_type = content_type.split(";", 1)[0].strip().lower()
    return media_type.startswith(_TEXT_TYPES) or media_type.endswith(_TEXT_SUFFIXES)


def _access_key(headers: Mapping[str, str], query: str) -> str | None:
    """The key id of a SigV4-signed request (header or presigned URL); None when unsigned."""
    authorization = headers.get("authorization", "")
    if authorization.startswith("AWS4-HMAC-SHA256") and "Credential=" in authorization:
        return authorization.split("Credential=", 1)[1].split("/", 1)[0]
    params = dict(parse_qsl(query))
    if "X-Amz-Signature" in params and "X-Amz-Credential" in params:
        return params["X-Amz-Credential"].split("/", 1)[0]
    return None


def build_event(
    method: str,
    target: str,
    headers: list[tuple[str, str]],
    body: bytes,
    source_ip: str,
    config: UrlConfig,
    region: str,
    access_key: str | None = None,
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
    if config.auth_type == "AWS_IAM":
        request_context["authorizer"] = {
            "iam": {
                "accessKey": access_key,
                "accountId": config.account_id,
                "callerId": access_key,
                "cognitoIdentity": None,
                "principalOrgId": None,
                "userArn": f"arn:aws:iam::{config.account_id}:user/{access_key or 'local'}",
                "userId": access_key,
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
            query = urlsplit(self.path).query
            access_key = _access_key({k.lower(): v for k, v in headers}, query)
            if config.auth_type == "AWS_IAM" and access_key is None:
                self._send(403, [("Content-Type", "application/json")], b'{"Message":"Forbidden"}')
                return
            if config.auth_type == "AWS_IAM" and not _ACCESS_KEY_ID.fullmatch(access_key or ""):
                self._refuse(403, "Forbidden: the signature's Credential does not name an AWS access key id")
                return
            event = build_event(
                self.command, self.path, headers, body, self.client_address[0], config, region, access_key
            )
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
