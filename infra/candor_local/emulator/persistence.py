"""Durable state for the embedded moto: what `candor up` holds survives Ctrl-C, a kill and a reboot.

moto keeps every resource in the memory of the process that runs it and has no persistence of its own. Its
state is plain Python objects, one backend per service, account and region, so this module pickles them
all at once (one object graph: a CloudFormation stack and the bucket it made stay one object) to
`<data dir>/moto-state.pickle`, written to a temporary file, fsynced, then renamed, so a kill mid-write
leaves the previous snapshot whole. A snapshot is taken shortly after each request that changes something
(not after reads, polls or receives) and when the emulator stops. Locks and the KMS keys' private keys,
which pickle cannot take, are written as what rebuilds them.

On restore, messages that were in flight (received, not yet deleted) are made visible at once: the worker
that held them died with the emulator, so they are redone within a poll, not after their visibility
timeout.

What is not kept: writes in the last `QUIET_S` before a kill -9 (the snapshot after them may not have been
written), and the state of moto versions other than the one that wrote the snapshot (refused, with the
way out, rather than loaded wrong).
"""

from __future__ import annotations

import io
import json
import logging
import os
import pickle
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import moto
from moto.backends import get_backend
from moto.core.base_backend import BackendDict

logger = logging.getLogger(__name__)

STATE_FILE = "moto-state.pickle"
ENDPOINT_FILE = "endpoint.json"
# A snapshot waits for this long without a change, so that a burst of writes costs one snapshot...
QUIET_S = 0.2
# ...but no longer than this after the first unsaved change.
MAX_DELAY_S = 1.0
# Operations that change nothing worth keeping: reads, and SQS receives (visibility is reset on restore).
READ_PREFIXES = ("Get", "List", "Describe", "Query", "Scan", "BatchGet", "Receive", "Verify", "Sign", "Head")


class StateVersionError(RuntimeError):
    """The data directory holds state written by another moto version."""


class _Pickler(pickle.Pickler):
    """Pickles moto's backends: locks become new locks, private keys their DER bytes."""

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, type(threading.Lock())):
            return (threading.Lock, ())
        if isinstance(obj, type(threading.RLock())):
            return (threading.RLock, ())
        if isinstance(obj, threading.Condition):
            return (threading.Condition, ())
        if isinstance(obj, threading.Event):
            return (threading.Event, ())
        key = _private_key_der(obj)
        if key is not None:
            return (_load_private_key, (key,))
        return NotImplemented


def _private_key_der(obj: Any) -> bytes | None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

    if not isinstance(obj, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey):
        return None
    return obj.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _load_private_key(der: bytes) -> Any:
    from cryptography.hazmat.primitives import serialization

    return serialization.load_der_private_key(der, None)


def snapshot_bytes() -> bytes:
    """Every backend in use, as one pickle: {"moto": version, "backends": {service: {account: {region: backend}}}}."""
    for attempt in range(5):
        state = {
            backends.service_name: {account: dict(regions.items()) for account, regions in list(backends.items())}
            for backends in list(BackendDict._instances)  # type: ignore[misc]
        }
        buffer = io.BytesIO()
        try:
            _Pickler(buffer, protocol=pickle.HIGHEST_PROTOCOL).dump({"moto": moto.__version__, "backends": state})
        except RuntimeError:  # a request changed a dict while it was pickled: take it again
            if attempt == 4:
                raise
            time.sleep(0.01)
            continue
        return buffer.getvalue()
    raise AssertionError("unreachable")


def restore_bytes(data: bytes) -> dict[str, int]:
    """Loads a snapshot into this process's moto; returns what came back (backends, in-flight messages)."""
    # The emulator's own file, in the user's own data directory: as trusted as the code that wrote it.
    state = pickle.loads(data)
    if state.get("moto") != moto.__version__:
        raise StateVersionError(
            f"the data directory holds state of moto {state.get('moto')}, this is moto {moto.__version__}: "
            "start with --ephemeral, or move the data directory away to start afresh"
        )
    restored = 0
    for service, accounts in state["backends"].items():
        backends = get_backend(service)
        for account, regions in accounts.items():
            for region, backend in regions.items():
                backends[account][region] = backend
                restored += 1
    return {"backends": restored, "messages_made_visible": _release_in_flight_messages()}


def _release_in_flight_messages() -> int:
    """Makes every received, undeleted message visible: whoever received it is gone."""
    released = 0
    for _, _, backend in get_backend("sqs").iter_backends():
        for queue in backend.queues.values():  # type: ignore[attr-defined]
            for message in queue._messages:
                if not message.visible and not message.delayed:
                    message.change_visibility(0)
                    released += 1
            queue._pending_messages.clear()
    return released


def is_read(method: str, path: str, target: str, action: str) -> bool:
    """Whether a request to moto changes nothing that a snapshot must keep."""
    operation = target.rpartition(".")[2] or action
    if operation:
        return operation.startswith(READ_PREFIXES)
    if method in ("GET", "HEAD", "OPTIONS"):
        return True
    # S3 Vectors' REST operations are POST /<Operation>.
    return path.strip("/").split("/", 1)[0].startswith(READ_PREFIXES)


class DurableState:
    """The snapshots of one data directory: `restore()` once before the server starts, `changed()` after
    each changing request, `close()` at the end (a last snapshot)."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.path = data_dir / STATE_FILE
        self._dirty_since: float | None = None
        self._last_change = 0.0
        self._condition = threading.Condition()
        self._closed = False
        self._thread: threading.Thread | None = None
        self.snapshots = 0

    def restore(self) -> dict[str, int] | None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if not self.path.is_file():
            return None
        restored = restore_bytes(self.path.read_bytes())
        logger.info("restored the emulator's state from %s: %s", self.path, restored)
        return restored

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="candor-moto-snapshots", daemon=True)
        self._thread.start()

    def changed(self) -> None:
        with self._condition:
            now = time.monotonic()
            self._last_change = now
            if self._dirty_since is None:
                self._dirty_since = now
            self._condition.notify()

    def save(self) -> None:
        data = snapshot_bytes()
        temporary = self.path.with_suffix(".tmp")
        with open(temporary, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, self.path)
        self.snapshots += 1

    def _run(self) -> None:
        while True:
            with self._condition:
                while self._dirty_since is None and not self._closed:
                    self._condition.wait()
                if self._closed:
                    return
                # Wait for a quiet moment, or for MAX_DELAY_S after the first unsaved change.
                while not self._closed:
                    now = time.monotonic()
                    due = min(self._last_change + QUIET_S, (self._dirty_since or now) + MAX_DELAY_S)
                    if now >= due:
                        break
                    self._condition.wait(due - now)
                self._dirty_since = None
            try:
                self.save()
            except Exception:  # a failed snapshot must not stop the emulator; the next change tries again
                logger.exception("snapshot of the emulator's state to %s failed", self.path)

    def close(self) -> None:
        with self._condition:
            self._closed = True
            self._condition.notify()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
        self.save()

    def saved_endpoint(self) -> dict[str, Any]:
        path = self.data_dir / ENDPOINT_FILE
        return dict(json.loads(path.read_text(encoding="utf-8"))) if path.is_file() else {}

    def save_endpoint(self, **details: Any) -> None:
        path = self.data_dir / ENDPOINT_FILE
        path.write_text(json.dumps({**self.saved_endpoint(), **details}), encoding="utf-8")


def recording_changes(app: Callable[..., Iterable[bytes]], state: DurableState) -> Callable[..., Iterable[bytes]]:
    """A WSGI middleware: after each request that may have changed something, `state.changed()`."""

    def wrapped(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        try:
            yield from app(environ, start_response)
        finally:
            query = urllib.parse.parse_qs(environ.get("QUERY_STRING", ""))
            if not is_read(
                environ.get("REQUEST_METHOD", "GET"),
                environ.get("PATH_INFO", "/"),
                environ.get("HTTP_X_AMZ_TARGET", ""),
                (query.get("Action") or [""])[0],
            ):
                state.changed()

    return wrapped
