"""An embedded AWS emulator: moto server on 127.0.0.1, in a thread of this process, on a free port; with a
data directory, its state is kept there across restarts (persistence.py)."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from types import TracebackType

from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
from moto.server import ThreadedMotoServer
from werkzeug.serving import make_server

from candor_local.emulator.moto_kms import honour_key_spec
from candor_local.emulator.moto_s3vectors import add_query_vectors
from candor_local.emulator.persistence import DurableState, recording_changes

logger = logging.getLogger(__name__)

EMULATOR_REGION = "us-east-1"
# moto accepts any credentials; fixed dummy ones keep a real profile from ever being used against it.
EMULATOR_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
}


class _SkippedByStack(logging.Filter):
    """Drops moto's notices about CloudFormation types it skips: `stack` applies those itself."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("No Moto CloudFormation support for")


def quiet_moto() -> None:
    """Silence moto's per-request access log and the CloudFormation notices that `stack` handles itself
    (resource types and properties its CloudFormation skips are applied through the service APIs)."""
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    moto_logger = logging.getLogger("moto")
    if not any(isinstance(f, _SkippedByStack) for f in moto_logger.filters):
        moto_logger.addFilter(_SkippedByStack())
    warnings.filterwarnings("ignore", message="Tried to parse .* not supported by moto", category=UserWarning)


class _DurableMotoServer(ThreadedMotoServer):
    """moto's threaded server with its WSGI app wrapped to snapshot the state after each change (the same
    app and server moto's own `_server_entry` builds)."""

    def __init__(self, ip_address: str, port: int, state: DurableState) -> None:
        super().__init__(ip_address=ip_address, port=port, verbose=False)
        self._state = state
        self.error: OSError | None = None

    def _server_entry(self) -> None:
        app = recording_changes(DomainDispatcherApplication(create_backend_app), self._state)
        try:
            self._server = make_server(self._ip_address, self._port, app, True)
        # The port it had before is taken: say so instead of waiting for ever (werkzeug prints the reason
        # and raises SystemExit for an address in use).
        except (OSError, SystemExit) as error:
            self.error = error if isinstance(error, OSError) else OSError(f"address {self._port} in use")
            self._server_ready_event.set()
            return
        self._server_ready_event.set()
        self._server.serve_forever()


class MotoEmulator:
    """moto server as a context manager: `with MotoEmulator() as emulator: emulator.endpoint_url`.

    With `data_dir`, the state is restored from there before the server starts and kept there while it runs;
    the server takes the port it had before (port 0), so the stack's URLs stay valid."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, data_dir: Path | None = None) -> None:
        self._host = host
        self._port = port
        self._server: ThreadedMotoServer | None = None
        self._endpoint_url: str | None = None
        self._state = DurableState(data_dir) if data_dir is not None else None
        self.restored: dict[str, int] | None = None

    @property
    def endpoint_url(self) -> str:
        if self._endpoint_url is None:
            raise RuntimeError("the emulator is not running; call start() first")
        return self._endpoint_url

    @property
    def region(self) -> str:
        return EMULATOR_REGION

    def environment(self) -> dict[str, str]:
        """Variables that point any boto3 client (in this or a child process) at the emulator."""
        return {
            **EMULATOR_CREDENTIALS,
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_REGION": EMULATOR_REGION,
            "AWS_DEFAULT_REGION": EMULATOR_REGION,
        }

    def start(self) -> str:
        """Start the server (port 0 picks a free port) and return its endpoint URL."""
        if self._server is not None:
            return self.endpoint_url
        quiet_moto()
        honour_key_spec()
        add_query_vectors()  # moto's S3 Vectors lacks QueryVectors (moto_s3vectors.py)
        server: ThreadedMotoServer
        if self._state is None:
            server = ThreadedMotoServer(ip_address=self._host, port=self._port, verbose=False)
        else:
            self.restored = self._state.restore()
            port = self._port or int(self._state.saved_endpoint().get("port", 0))
            server = _DurableMotoServer(self._host, port, self._state)
        server.start()
        if isinstance(server, _DurableMotoServer) and server.error is not None:
            raise RuntimeError(
                f"moto server cannot listen on {self._host}:{port}, the port this data directory's stack had "
                f"({server.error}); is another `candor up` running on it? Stop it, or use another --data"
            ) from server.error
        host, port = server.get_host_and_port()
        if self._state is not None:
            self._state.save_endpoint(port=port)
            self._state.start()
        self._server = server
        self._endpoint_url = f"http://{host}:{port}"
        logger.info("moto server listening on %s", self._endpoint_url)
        return self._endpoint_url

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.stop()
        if self._state is not None:
            self._state.close()
            logger.info("the emulator's state is kept in %s", self._state.path)
        logger.info("moto server on %s stopped", self._endpoint_url)
        self._server = None
        self._endpoint_url = None

    def __enter__(self) -> MotoEmulator:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
