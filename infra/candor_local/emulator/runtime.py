"""The whole service on one machine: an AWS endpoint (embedded moto unless told otherwise), the template's
stack deployed on it, and worker processes playing Lambda: as many instances of a function as its SQS event
source's ScalingConfig.MaximumConcurrency allows (one without it), all polling the same queue. A function's
Kinesis streams are polled by its first instance only: one poller per shard, as Lambda reads a shard, one
batch at a time and in order. Its checkpoints are kept in the data directory (`CHECKPOINT_DIR`).

    with LocalEnvironment.start() as env:
        env.client("s3").put_object(Bucket=env.resources["UploadBucket"], Key="photo.jpg", Body=data)
        env.wait_idle()

Endpoint choice: `endpoint_url=None` uses AWS_ENDPOINT_URL when it is set (LocalStack, a moto server of
your own) and starts an embedded moto server otherwise; a URL uses that endpoint; `"aws"` uses boto3's
default resolution, i.e. AWS itself with your credentials.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import boto3

from candor.core.settings import DEFAULT_MODEL_DIR
from candor_local.emulator.local_credentials import ADMIN_ROLE, SEARCH_ROLE, local_credentials, role_name
from candor_local.emulator.moto_server import EMULATOR_CREDENTIALS, EMULATOR_REGION, MotoEmulator
from candor_local.emulator.stack import DeployedStack, Endpoint, deploy_stack
from candor_local.emulator.template import (
    DEFAULT_REGION,
    DEFAULT_TEMPLATE_PATH,
    FunctionSpec,
    KinesisEventSource,
    Template,
    load_template,
)
from candor_local.emulator.worker import log_stream_name, shards_behind
from candor_local.emulator.worker_config import LocalCredential, QueueSource, StreamSource, UrlConfig, WorkerConfig

logger = logging.getLogger(__name__)

USE_AWS = "aws"
# Variables the worker gets from the template or from the runtime, never from the caller's shell.
_OWN_PREFIXES = ("AWS_", "POWERTOOLS_", "LAMBDA_", "_HANDLER", "_X_AMZN")
_KEPT_AWS = ("AWS_CA_BUNDLE",)
_SUPERVISE_EVERY_S = 0.5
_STOP_GRACE_S = 8.0


class _FunctionLog:
    """A function's log file (its log group): every instance's lines, whole lines each, interleaved."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._file: IO[bytes] | None = None

    def write(self, line: bytes) -> None:
        with self._lock:
            if self._file is None:
                self._file = self.path.open("ab")
            self._file.write(line)
            self._file.flush()

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None


@dataclass
class _Worker:
    """One function instance: its process, its log, and how often it had to be restarted."""

    spec: FunctionSpec
    config: WorkerConfig
    config_path: Path
    env: dict[str, str]
    log: _FunctionLog
    echo: bool
    tmp_dir: Path
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    restarts: int = 0
    next_start: float = 0.0
    _pump: threading.Thread | None = field(default=None, repr=False)

    def start(self) -> None:
        ready = Path(self.config.ready_file)
        ready.unlink(missing_ok=True)
        self.config.dump(self.config_path)
        # Each instance, a replacement too, writes a log stream of its own within the function's log group.
        self.env["AWS_LAMBDA_LOG_STREAM_NAME"] = log_stream_name()
        # Each instance has a /tmp of its own, empty when it starts, as each Lambda sandbox has: instances
        # that shared one would delete or read each other's downloads.
        shutil.rmtree(self.tmp_dir, ignore_errors=True)
        self.tmp_dir.mkdir(parents=True)
        self.env["TMPDIR"] = str(self.tmp_dir)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "candor_local.emulator.worker", str(self.config_path)],
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            # Ctrl-C in a terminal reaches the runtime only; it stops the workers in order.
            start_new_session=True,
        )
        self.started_at = time.monotonic()
        self._pump = threading.Thread(
            target=_pump_output,
            args=(self.process.stdout, self.log, self.name, self.echo),
            name=f"log-{self.name}",
            daemon=True,
        )
        self._pump.start()

    @property
    def name(self) -> str:
        """The instance's name in logs: the logical id, with #n when the function runs several."""
        return self.config.instance_name or self.spec.logical_id

    @property
    def log_path(self) -> Path:
        return self.log.path

    def ready_details(self) -> dict[str, Any] | None:
        ready = Path(self.config.ready_file)
        if not ready.exists():
            return None
        details: dict[str, Any] = json.loads(ready.read_text(encoding="utf-8"))
        return details if self.process is not None and details.get("pid") == self.process.pid else None

    def exited(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def terminate(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)

    def wait(self, timeout_s: float) -> None:
        if self.process is None:
            return
        try:
            self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            logger.warning("%s did not stop within %.0f s; killing it", self.name, timeout_s)
            self.process.kill()
            self.process.wait()
        if self._pump is not None:
            self._pump.join(timeout=2.0)


def _pump_output(stream: IO[bytes] | None, log: _FunctionLog, name: str, echo: bool) -> None:
    """Copy a worker's stdout/stderr to its function's log file (and the console when asked), line by line."""
    if stream is None:
        return
    for line in iter(stream.readline, b""):
        log.write(line)
        if echo:
            sys.stderr.write(f"[{name}] {line.decode('utf-8', 'replace')}")
            sys.stderr.flush()


class LocalEnvironment:
    """The running local service; build it with `LocalEnvironment.start(...)`, end it with `stop()` (or use
    it as a context manager)."""

    def __init__(
        self,
        template: Template,
        stack: DeployedStack,
        emulator: MotoEmulator | None,
        log_dir: Path,
        run_dir: Path,
        credentials: Mapping[str, LocalCredential] | None = None,
    ) -> None:
        self.template = template
        self.stack = stack
        self._emulator = emulator
        self.log_dir = log_dir
        self._run_dir = run_dir
        # Key id -> secret and role: what the Function URLs verify signatures against (local_credentials.py).
        self.credentials = dict(credentials) if credentials is not None else _credentials(stack, run_dir)
        self._workers: dict[str, _Worker] = {}
        # Where the instances note the batches they hold (worker.InFlight); kept in the data directory if any.
        self.in_flight_dir = run_dir / IN_FLIGHT_DIR
        # Where the Kinesis pollers keep their checkpoints (worker.Checkpoints); likewise.
        self.checkpoint_dir = run_dir / CHECKPOINT_DIR
        self._stopping = threading.Event()
        self._supervisor: threading.Thread | None = None
        self._lock = threading.Lock()

    # ------------------------------------------------------------------------------------------------ start

    @classmethod
    def start(
        cls,
        stack_name: str = "candor",
        endpoint_url: str | None = None,
        model_dir: Path | str | None = None,
        template_path: Path | str = DEFAULT_TEMPLATE_PATH,
        api_port: int = 0,
        log_dir: Path | str | None = None,
        *,
        parameter_overrides: Mapping[str, str] | None = None,
        echo_logs: bool = False,
        ready_timeout_s: float = 120.0,
        data_dir: Path | None = None,
        admin_port: int = 0,
        credentials: Iterable[LocalCredential] = (),
    ) -> LocalEnvironment:
        """Start an endpoint if needed, deploy the stack, start each function's instances (FunctionSpec.instances)
        and return once every one has initialised (imported its handler) and polls; the Function URL then
        answers. With `data_dir`, the embedded endpoint keeps its state there and comes back with it, and the
        admin credentials are kept there too. The face API listens on `api_port`, the policy administration
        on `admin_port` (0: a free port); `credentials` are local keys beside the defaults."""
        emulator: MotoEmulator | None = None
        run_dir = Path(tempfile.mkdtemp(prefix="candor-local-"))
        try:
            endpoint, emulator = _connect(endpoint_url, data_dir)
            template = load_template(template_path, parameter_overrides, endpoint.region)
            stack = deploy_stack(template, stack_name, endpoint, parameter_overrides)
            # Logs outlive the environment (the run folder does not): they are what explains a failure.
            logs = Path(log_dir) if log_dir is not None else Path(tempfile.mkdtemp(prefix="candor-logs-"))
            logs.mkdir(parents=True, exist_ok=True)
            keys = _credentials(stack, data_dir or run_dir, credentials)
            environment = cls(template, stack, emulator, logs, run_dir, keys)
            environment.in_flight_dir = (data_dir or run_dir) / IN_FLIGHT_DIR
            environment.checkpoint_dir = (data_dir or run_dir) / CHECKPOINT_DIR
            release_in_flight(environment.in_flight_dir, stack.client("sqs"))
        except BaseException:
            if emulator is not None:
                emulator.stop()
            shutil.rmtree(run_dir, ignore_errors=True)
            raise
        try:
            environment._start_workers(
                Path(model_dir) if model_dir else DEFAULT_MODEL_DIR, api_port, admin_port, echo_logs, ready_timeout_s
            )
        except BaseException:
            environment.stop()
            raise
        return environment

    def _start_workers(
        self, model_dir: Path, api_port: int, admin_port: int, echo: bool, ready_timeout_s: float
    ) -> None:
        base_env = _worker_base_env(self.stack.endpoint)
        url_functions = _face_api_first(f.logical_id for f in self.template.functions.values() if f.has_function_url)
        ports = {ADMIN_API_FUNCTION: admin_port, **({url_functions[0]: api_port} if url_functions else {})}
        for spec in self.template.functions.values():
            if not spec.sqs_sources and not spec.kinesis_sources and not spec.has_function_url:
                # No worker for a function no queue, stream or URL invokes: a schedule invokes it (below), or nothing.
                logger.info("%s polls no queue or stream and serves no URL: no worker of its own", spec.logical_id)
                continue
            port = ports.get(spec.logical_id, 0)
            log = _FunctionLog(self.log_dir / f"{spec.logical_id}.log")
            for number in range(1, spec.instances + 1):
                name = spec.logical_id if spec.instances == 1 else f"{spec.logical_id}#{number}"
                # The first instance alone polls the streams: one poller per shard keeps its records in order.
                config = self._worker_config(spec, port, name, polls_streams=number == 1)
                env = {**base_env, **self._function_env(spec, config, model_dir)}
                self._workers[name] = _Worker(
                    spec, config, self._run_dir / f"{name}.json", env, log, echo, self._run_dir / "tmp" / name
                )
        local = f"python{sys.version_info.major}.{sys.version_info.minor}"
        runtimes = {w.spec.runtime for w in self._workers.values()} - {local}
        if runtimes:
            logger.info("the template's runtime is %s; handlers run here under %s", ", ".join(sorted(runtimes)), local)
        for worker in self._workers.values():
            worker.start()
        self._await_ready(ready_timeout_s)
        self._supervisor = threading.Thread(target=self._supervise, name="candor-local-supervisor", daemon=True)
        self._supervisor.start()
        for logical_id, expression, period_s in scheduled_functions(self.template, self.stack):
            if period_s is None:
                logger.warning("%s runs on %s: only rate() schedules run locally", logical_id, expression)
                continue
            thread = threading.Thread(
                target=self._run_on_schedule,
                args=(logical_id, expression, period_s, model_dir),
                name=f"schedule-{logical_id}",
                daemon=True,
            )
            thread.start()
            logger.info("%s runs every %.0f s (%s), as EventBridge would invoke it", logical_id, period_s, expression)
        counts = Counter(worker.spec.logical_id for worker in self._workers.values())
        started = ", ".join(f"{name} x{count}" if count > 1 else name for name, count in sorted(counts.items()))
        logger.info("local environment ready: %s; logs in %s", started, self.log_dir)

    @classmethod
    def attach(
        cls,
        stack_name: str = "candor",
        endpoint_url: str | None = None,
        template_path: Path | str = DEFAULT_TEMPLATE_PATH,
    ) -> LocalEnvironment:
        """The stack on an endpoint, created from the template if missing, without starting any worker
        (for one-off invocations next to a running `candor up`, or against LocalStack or AWS)."""
        endpoint, emulator = _connect(endpoint_url)
        template = load_template(template_path, None, endpoint.region)
        stack = deploy_stack(template, stack_name, endpoint)
        run_dir = Path(tempfile.mkdtemp(prefix="candor-local-"))
        return cls(template, stack, emulator, Path(tempfile.mkdtemp(prefix="candor-logs-")), run_dir)

    def invoke(self, logical_id: str, event: Any, model_dir: Path | str | None = None) -> Any:
        """Invoke one function once with `event`, as `sam local invoke` does: a fresh process with the
        function's environment and import path, its logs on stderr; returns the handler's result."""
        spec = self.template.functions.get(logical_id)
        if spec is None:
            known = ", ".join(sorted(self.template.functions))
            raise KeyError(f"{logical_id} is not a function of the template: {known}")
        config = self._worker_config(spec, 0)
        env = {
            **_worker_base_env(self.stack.endpoint),
            **self._function_env(spec, config, Path(model_dir) if model_dir else DEFAULT_MODEL_DIR),
        }
        scratch = Path(tempfile.mkdtemp(prefix="candor-invoke-", dir=self._run_dir))
        (scratch / "tmp").mkdir()
        env["TMPDIR"] = str(scratch / "tmp")
        config_path, event_path, result_path = scratch / "config.json", scratch / "event.json", scratch / "result.json"
        config.dump(config_path)
        event_path.write_text(json.dumps(event), encoding="utf-8")
        command = [sys.executable, "-m", "candor_local.emulator.worker", "--invoke", str(config_path), str(event_path)]
        # Logs go to stderr so that stdout carries only the result, as with `sam local invoke`.
        completed = subprocess.run([*command, str(result_path)], env=env, stdout=sys.stderr, check=False)
        if completed.returncode != 0 or not result_path.is_file():
            raise RuntimeError(f"{logical_id} failed (exit code {completed.returncode}); its log is above")
        return json.loads(result_path.read_text(encoding="utf-8"))

    def _worker_config(
        self, spec: FunctionSpec, port: int, instance_name: str = "", *, polls_streams: bool = False
    ) -> WorkerConfig:
        stack = self.stack
        queues = [
            QueueSource(
                queue_url=stack.queue_url(source.queue_logical_id),
                queue_arn=stack.queue_arn(source.queue_logical_id),
                batch_size=source.batch_size,
                maximum_batching_window_s=source.maximum_batching_window_s,
                report_batch_item_failures=source.report_batch_item_failures,
            )
            for source in spec.sqs_sources
        ]
        streams = [self._stream_source(spec, source) for source in spec.kinesis_sources] if polls_streams else []
        url = None
        if spec.has_function_url:
            # Only the secrets of the roles that may invoke the URL; a URL no role names, any local key.
            invokers = self.template.url_invokers(spec.logical_id)
            allowed = [c for c in self.credentials.values() if not invokers or c.role in invokers]
            url = UrlConfig(
                host="127.0.0.1",
                port=port,
                auth_type=str(spec.function_url_auth),
                account_id=stack.account_id,
                function_arn=stack.function_arn(spec.logical_id),
                credentials=allowed,
                other_keys={key: c.role_name for key, c in self.credentials.items() if c not in allowed},
            )
        return WorkerConfig(
            logical_id=spec.logical_id,
            function_name=stack.function_name(spec.logical_id),
            function_arn=stack.function_arn(spec.logical_id),
            handler=spec.handler,
            python_path=[str(path) for path in spec.python_path],
            timeout_s=spec.timeout_s,
            memory_mb=spec.memory_mb,
            region=stack.region,
            ready_file=str(self._run_dir / f"{instance_name or spec.logical_id}.ready"),
            queues=queues,
            function_url=url,
            instance_name=instance_name,
            in_flight_dir=str(self.in_flight_dir),
            streams=streams,
            checkpoint_dir=str(self.checkpoint_dir),
        )

    def _stream_source(self, spec: FunctionSpec, source: KinesisEventSource) -> StreamSource:
        stack = self.stack
        role = self.template.cfn["Resources"][spec.logical_id]["Properties"].get("Role")
        role_id = role.get("Fn::GetAtt", [None])[0] if isinstance(role, dict) else None
        # The role is played, not deployed: its ARN is the one it would have (stack name, logical id).
        identity = (
            f"arn:{stack.partition}:iam::{stack.account_id}:role/{role_name(stack.name, role_id)}"
            if isinstance(role_id, str)
            else str(stack.resolve(role) or "")
        )
        failure_queue = source.on_failure_queue_logical_id
        return StreamSource(
            mapping_id=source.logical_id,
            stream_name=stack.stream_name(source.stream_logical_id),
            stream_arn=stack.stream_arn(source.stream_logical_id),
            starting_position=source.starting_position,
            batch_size=source.batch_size,
            maximum_batching_window_s=source.maximum_batching_window_s,
            maximum_retry_attempts=source.maximum_retry_attempts,
            bisect_batch_on_function_error=source.bisect_batch_on_function_error,
            report_batch_item_failures=source.report_batch_item_failures,
            invoke_identity_arn=identity,
            starting_position_timestamp=source.starting_position_timestamp,
            on_failure_queue_url=stack.queue_url(failure_queue) if failure_queue else "",
        )

    def _function_env(self, spec: FunctionSpec, config: WorkerConfig, model_dir: Path) -> dict[str, str]:
        """The template's variables, resolved, plus the ones Lambda itself sets."""
        env = self.stack.function_environment(spec)
        if "MODEL_DIR" in env:
            env["MODEL_DIR"] = str(model_dir)  # /opt/models is the model layer on Lambda
        env.update(
            {
                "AWS_LAMBDA_FUNCTION_NAME": config.function_name,
                "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
                "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(spec.memory_mb),
                "AWS_LAMBDA_FUNCTION_TIMEOUT": str(spec.timeout_s),
                "AWS_LAMBDA_LOG_GROUP_NAME": f"/aws/lambda/{config.function_name}",
                "AWS_EXECUTION_ENV": f"AWS_Lambda_{spec.runtime}",
                "AWS_REGION": self.stack.region,
                "AWS_DEFAULT_REGION": self.stack.region,
                "LAMBDA_TASK_ROOT": str(spec.code_dir),
                "_HANDLER": spec.handler,
                # As `sam local` does: Powertools then leaves X-Ray tracing off.
                "AWS_SAM_LOCAL": "true",
                "PYTHONUNBUFFERED": "1",
            }
        )
        return env

    def _await_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        pending = dict(self._workers)
        while pending:
            for name, worker in list(pending.items()):
                details = worker.ready_details()
                if details is not None:
                    if "port" in details and worker.config.function_url is not None:
                        # Restarts keep the port, so the URL stays valid for the whole session.
                        worker.config = replace(
                            worker.config,
                            function_url=replace(worker.config.function_url, port=details["port"]),
                        )
                    del pending[name]
                elif worker.exited() is not None:
                    worker.wait(1.0)
                    log = _tail(worker.log_path)
                    raise RuntimeError(f"{name} exited with code {worker.exited()} while starting:\n{log}")
            if pending and time.monotonic() > deadline:
                raise TimeoutError(f"workers not ready after {timeout_s:.0f} s: {sorted(pending)}")
            time.sleep(0.05)

    # ------------------------------------------------------------------------------------------- supervise

    def _run_on_schedule(self, logical_id: str, expression: str, period_s: float, model_dir: Path) -> None:
        """Invokes the function once a period with EventBridge's scheduled event, until the environment stops."""
        while not self._stopping.wait(period_s):
            event = {
                "version": "0",
                "id": str(uuid.uuid4()),
                "detail-type": "Scheduled Event",
                "source": "aws.events",
                "time": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                "detail": {},
            }
            try:
                self.invoke(logical_id, event, model_dir)
            except Exception:  # a failed run is logged, as Lambda's Errors metric would show it; the next one runs
                logger.exception("the scheduled run of %s (%s) failed", logical_id, expression)

    def _supervise(self) -> None:
        """A worker that dies is replaced, as Lambda starts a new instance; a crash loop backs off."""
        while not self._stopping.wait(_SUPERVISE_EVERY_S):
            with self._lock:
                for worker in self._workers.values():
                    code = worker.exited()
                    if code is None or self._stopping.is_set():
                        continue
                    now = time.monotonic()
                    if worker.next_start == 0.0:
                        quick = now - worker.started_at < 10.0
                        worker.restarts = worker.restarts + 1 if quick else 1
                        delay = min(30.0, 0.5 * 2 ** (worker.restarts - 1))
                        worker.next_start = now + delay
                        logger.warning(
                            "%s exited with code %s; starting a new instance in %.1f s (log: %s)",
                            worker.name,
                            code,
                            delay,
                            worker.log_path,
                        )
                    elif now >= worker.next_start:
                        worker.wait(1.0)
                        worker.next_start = 0.0
                        worker.start()
                        logger.info(
                            "%s: new instance started (pid %s)",
                            worker.name,
                            worker.process.pid if worker.process else "?",
                        )

    # --------------------------------------------------------------------------------------------- public

    @property
    def endpoint_url(self) -> str | None:
        """The AWS endpoint in use; None when it is AWS itself."""
        return self.stack.endpoint.url

    @property
    def embeds_endpoint(self) -> bool:
        """Whether the endpoint is the moto server this process runs (its CPU time is this process's)."""
        return self._emulator is not None

    @property
    def region(self) -> str:
        return self.stack.region

    @property
    def restored(self) -> dict[str, int] | None:
        """What the embedded endpoint brought back from its data directory (None: it started empty)."""
        return self._emulator.restored if self._emulator is not None else None

    @property
    def resources(self) -> dict[str, str]:
        """Logical id → physical id of every deployed resource (bucket name, table names, queue URLs)."""
        return dict(self.stack.physical_ids)

    @property
    def function_urls(self) -> dict[str, str]:
        return {
            w.spec.logical_id: f"http://{w.config.function_url.host}:{w.config.function_url.port}/"
            for w in self._workers.values()
            if w.config.function_url is not None
        }

    @property
    def api_url(self) -> str:
        """The face API's Function URL: SearchFunction's, else the first function's that has one, by logical id."""
        urls = self.function_urls
        if not urls:
            raise LookupError("no function of the template has a Function URL")
        return urls[_face_api_first(urls)[0]]

    @property
    def admin_url(self) -> str:
        """The policy administration's Function URL (AdminFunction's)."""
        urls = self.function_urls
        if ADMIN_API_FUNCTION not in urls:
            raise LookupError(f"the template has no {ADMIN_API_FUNCTION} with a Function URL")
        return urls[ADMIN_API_FUNCTION]

    @property
    def admin_credentials(self) -> LocalCredential:
        """The local key that plays PolicyAdminRole (kept in the data directory, else made for this run)."""
        return next(c for c in self.credentials.values() if c.role == ADMIN_ROLE)

    @property
    def admin_session(self) -> boto3.session.Session:
        """A boto3 session that signs with the admin key, for the admin URL:
        `env.admin_session.client("rekognition", endpoint_url=env.admin_url)`."""
        admin = self.admin_credentials
        return boto3.session.Session(
            aws_access_key_id=admin.access_key_id,
            aws_secret_access_key=admin.secret_access_key,
            region_name=self.region,
        )

    @property
    def session(self) -> boto3.session.Session:
        return self.stack.endpoint.session

    def client(self, service_name: str) -> Any:
        """A boto3 client for the environment's endpoint, region and credentials."""
        return self.stack.endpoint.client(service_name)

    def environment(self) -> dict[str, str]:
        """Variables that point a boto3 client in another process at this environment."""
        env = {"AWS_REGION": self.region, "AWS_DEFAULT_REGION": self.region}
        if self.endpoint_url:
            env["AWS_ENDPOINT_URL"] = self.endpoint_url
        env.update(_credential_env(self.session))
        return env

    def log_path(self, logical_id: str) -> Path:
        return self.log_dir / f"{logical_id}.log"

    def worker_pid(self, logical_id: str) -> int | None:
        """The process id of the function's first instance (None while it is being replaced)."""
        return self.worker_pids(logical_id)[0]

    def worker_pids(self, logical_id: str) -> list[int | None]:
        """The process id of each instance of the function, in order (None while one is being replaced)."""
        workers = [w for w in self._workers.values() if w.spec.logical_id == logical_id]
        if not workers:
            raise KeyError(f"{logical_id} is not running here")
        return [w.process.pid if w.process is not None and w.process.poll() is None else None for w in workers]

    def wait_idle(self, timeout: float = 60.0, settle_s: float = 1.0) -> None:
        """Return once every queue a function consumes has been empty, nothing in flight or delayed, and
        every Kinesis shard a function reads has been done up to its last record, for `settle_s` without a
        break; raise TimeoutError otherwise."""
        sqs = self.client("sqs")
        kinesis = self.client("kinesis") if any(w.config.streams for w in self._workers.values()) else None
        urls = sorted({q.queue_url for w in self._workers.values() for q in w.config.queues})
        names = (
            "ApproximateNumberOfMessages",
            "ApproximateNumberOfMessagesNotVisible",
            "ApproximateNumberOfMessagesDelayed",
        )
        deadline = time.monotonic() + timeout
        idle_since: float | None = None
        counts: dict[str, list[int]] = {}
        while True:
            counts = {}
            for url in urls:
                attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=list(names))["Attributes"]
                counts[url] = [int(attributes.get(name, 0)) for name in names]
            for worker in self._workers.values():
                for stream in worker.config.streams:
                    behind = shards_behind(kinesis, str(self.checkpoint_dir), worker.config.function_name, stream)
                    # A shard with records not yet done counts as one message waiting.
                    counts[f"{stream.stream_name} ({worker.spec.logical_id})"] = [len(behind), 0, 0]
            now = time.monotonic()
            if all(sum(values) == 0 for values in counts.values()):
                idle_since = idle_since if idle_since is not None else now
                if now - idle_since >= settle_s:
                    return
            else:
                idle_since = None
            if now > deadline:
                busy = {url.rsplit("/", 1)[-1]: values for url, values in counts.items() if sum(values)}
                raise TimeoutError(f"not idle after {timeout:.0f} s (visible, in flight, delayed): {busy}")
            time.sleep(0.2)

    def stop(self) -> None:
        """Stop the workers (each finishes its current poll), then the embedded endpoint."""
        self._stopping.set()
        if self._supervisor is not None:
            self._supervisor.join(timeout=5.0)
        with self._lock:
            for worker in self._workers.values():
                worker.terminate()
            for worker in self._workers.values():
                worker.wait(_STOP_GRACE_S)
            for worker in self._workers.values():
                worker.log.close()
        if self._emulator is not None:
            self._emulator.stop()
            self._emulator = None
        shutil.rmtree(self._run_dir, ignore_errors=True)

    def __enter__(self) -> LocalEnvironment:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


# The face API (CANDOR_API, api_port) is SearchFunction's URL; any other URL function (AdminFunction) comes after.
FACE_API_FUNCTION = "SearchFunction"
# The policy administration (CANDOR_ADMIN_API, admin_port).
ADMIN_API_FUNCTION = "AdminFunction"


def _face_api_first(logical_ids: Iterable[str]) -> list[str]:
    return sorted(logical_ids, key=lambda logical_id: (logical_id != FACE_API_FUNCTION, logical_id))


IN_FLIGHT_DIR = "in-flight"
CHECKPOINT_DIR = "kinesis-checkpoints"


def release_in_flight(directory: Path, sqs: Any) -> int:
    """Makes visible at once the messages that instances of an earlier run held when they were killed (their
    worker.InFlight files); returns how many. A receipt handle that is no longer valid (the message was
    redelivered or deleted since) is skipped."""
    released = 0
    for path in sorted(directory.glob("*.json")) if directory.is_dir() else []:
        try:
            held = json.loads(path.read_text(encoding="utf-8"))
            handles = list(held["receipt_handles"])
            for start in range(0, len(handles), 10):
                response = sqs.change_message_visibility_batch(
                    QueueUrl=held["queue_url"],
                    Entries=[
                        {"Id": str(i), "ReceiptHandle": handle, "VisibilityTimeout": 0}
                        for i, handle in enumerate(handles[start : start + 10])
                    ],
                )
                released += len(response.get("Successful", []))
        except Exception:  # a queue gone, a file cut short: nothing to release from it
            logger.warning("could not release the messages noted in %s", path, exc_info=True)
        path.unlink(missing_ok=True)
    if released:
        logger.info("%d message(s) held by instances of the last run made visible again", released)
    return released


_RATE = re.compile(r"rate\((\d+) (minute|minutes|hour|hours|day|days)\)")
_UNIT_S = {"minute": 60, "hour": 3600, "day": 86400}


def schedule_period_s(expression: str) -> float | None:
    """Seconds between runs of an EventBridge rate() expression; None for cron() (not run locally)."""
    match = _RATE.fullmatch(expression.strip())
    if match is None:
        return None
    return int(match.group(1)) * _UNIT_S[match.group(2).rstrip("s")]


def scheduled_functions(template: Template, stack: DeployedStack) -> list[tuple[str, str, float | None]]:
    """(function, schedule expression, period) for each EventBridge rule of the template that targets a function."""
    found = []
    for resource in template.resources.values():
        if resource["Type"] != "AWS::Events::Rule" or "ScheduleExpression" not in resource.get("Properties", {}):
            continue
        expression = str(stack.resolve(resource["Properties"]["ScheduleExpression"]))
        for target in resource["Properties"].get("Targets", []):
            arn = target.get("Arn", {})
            attribute = arn.get("Fn::GetAtt") if isinstance(arn, dict) else None
            if isinstance(attribute, list) and attribute[0] in template.functions:
                found.append((str(attribute[0]), expression, schedule_period_s(expression)))
    return found


def _connect(endpoint_url: str | None, data_dir: Path | None = None) -> tuple[Endpoint, MotoEmulator | None]:
    """The endpoint to use (see the module docstring), starting moto when nothing else is configured."""
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or DEFAULT_REGION
    if endpoint_url is None and not os.environ.get("AWS_ENDPOINT_URL"):
        emulator = MotoEmulator(data_dir=data_dir)
        url = emulator.start()
        session = boto3.session.Session(
            aws_access_key_id=EMULATOR_CREDENTIALS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=EMULATOR_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
            aws_session_token=EMULATOR_CREDENTIALS["AWS_SESSION_TOKEN"],
            region_name=EMULATOR_REGION,
        )
        return Endpoint(session=session, url=url), emulator
    if endpoint_url == USE_AWS:
        logger.info("using AWS itself (region %s)", region)
        return Endpoint(session=boto3.session.Session(region_name=region), url=None), None
    url = endpoint_url or os.environ["AWS_ENDPOINT_URL"]
    session = boto3.session.Session(region_name=region)
    if session.get_credentials() is None:
        # Emulators accept any credentials; don't make the user invent some.
        session = boto3.session.Session(aws_access_key_id="test", aws_secret_access_key="test", region_name=region)
    logger.info("using the AWS endpoint %s (region %s)", url, region)
    return Endpoint(session=session, url=url), None


def _credentials(
    stack: DeployedStack, folder: Path, more: Iterable[LocalCredential] = ()
) -> dict[str, LocalCredential]:
    """The local keys, and the endpoint's own (a LocalStack user's, say) as a search key when it has a static
    one: what the runtime signs its own requests with keeps working."""
    own: list[LocalCredential] = []
    frozen = stack.endpoint.session.get_credentials()
    if frozen is not None:
        keys = frozen.get_frozen_credentials()
        own.append(LocalCredential(str(keys.access_key), str(keys.secret_key), SEARCH_ROLE))
    return local_credentials(stack.name, folder, [*own, *more])


def _credential_env(session: boto3.session.Session) -> dict[str, str]:
    credentials = session.get_credentials()
    if credentials is None:
        return {}
    frozen = credentials.get_frozen_credentials()
    env = {"AWS_ACCESS_KEY_ID": str(frozen.access_key), "AWS_SECRET_ACCESS_KEY": str(frozen.secret_key)}
    if frozen.token:
        env["AWS_SESSION_TOKEN"] = frozen.token
    return env


def _worker_base_env(endpoint: Endpoint) -> dict[str, str]:
    """The caller's environment minus anything AWS or Lambda (a worker gets those from the template and
    the runtime only), plus the endpoint and credentials. Credentials are passed as keys, as Lambda
    passes its role's."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(_OWN_PREFIXES) or key in _KEPT_AWS}
    if endpoint.url:
        env["AWS_ENDPOINT_URL"] = endpoint.url
    env.update(_credential_env(endpoint.session))
    return env


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
