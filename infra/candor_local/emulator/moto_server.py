"""An embedded AWS emulator: moto server on 127.0.0.1, in a thread of this process, on a free port."""

from __future__ import annotations

import logging
import warnings
from types import TracebackType

from moto.server import ThreadedMotoServer

from candor_local.emulator.moto_s3vectors import add_query_vectors

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


class MotoEmulator:
    """moto server as a context manager: `with MotoEmulator() as emulator: emulator.endpoint_url`."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._host = host
        self._port = port
        self._server: ThreadedMotoServer | None = None
        self._endpoint_url: str | None = None

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
        add_query_vectors()  # moto's S3 Vectors lacks QueryVectors (moto_s3vectors.py)
        server = ThreadedMotoServer(ip_address=self._host, port=self._port, verbose=False)
        server.start()
        host, port = server.get_host_and_port()
        self._server = server
        self._endpoint_url = f"http://{host}:{port}"
        logger.info("moto server listening on %s", self._endpoint_url)
        return self._endpoint_url

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.stop()
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
