"""What a function instance is told when it starts: its queues, its Kinesis streams, its Function URL and its
limits, written as JSON by the runtime and read by the worker and the Function URL server."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class QueueSource:
    queue_url: str
    queue_arn: str
    batch_size: int
    maximum_batching_window_s: int
    report_batch_item_failures: bool


@dataclass(frozen=True)
class StreamSource:
    """A Kinesis event source mapping, as its shard pollers play it (template.KinesisEventSource, resolved)."""

    mapping_id: str  # the mapping's logical id: names its checkpoint file
    stream_name: str
    stream_arn: str
    starting_position: str
    batch_size: int
    maximum_batching_window_s: int
    maximum_retry_attempts: int  # -1: forever
    bisect_batch_on_function_error: bool
    report_batch_item_failures: bool
    # The function's execution role, which Lambda names in each record (invokeIdentityArn).
    invoke_identity_arn: str
    starting_position_timestamp: float | None = None
    # The OnFailure destination's queue URL, told of each batch skipped after its retries; empty: none.
    on_failure_queue_url: str = ""


@dataclass(frozen=True)
class LocalCredential:
    """A local access key: its secret, and the template's role (logical id) whoever signs with it plays."""

    access_key_id: str
    secret_access_key: str
    role: str
    # The role's name in the caller's ARN (arn:aws:sts::<account>:assumed-role/<role_name>/<key id>);
    # empty: the stack's name for the role.
    role_name: str = ""


@dataclass(frozen=True)
class UrlConfig:
    host: str
    port: int
    auth_type: str
    account_id: str
    # The function's ARN, for the refusals that name it.
    function_arn: str = ""
    # The credentials whose role may invoke this URL (AWS_IAM): the only secrets this URL is given.
    credentials: list[LocalCredential] = field(default_factory=list)
    # Every other local key id -> the role name it plays: refused with AccessDeniedException, not as unknown.
    other_keys: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class WorkerConfig:
    """Everything a worker needs besides its environment; written as JSON by the runtime."""

    logical_id: str
    function_name: str
    function_arn: str
    handler: str
    python_path: list[str]
    timeout_s: int
    memory_mb: int
    region: str
    ready_file: str
    queues: list[QueueSource] = field(default_factory=list)
    function_url: UrlConfig | None = None
    # The instance's name in logs (EmbedFunction#2) when the function runs several; empty otherwise.
    instance_name: str = ""
    # Where the instance notes the messages it holds while it runs a batch (worker.InFlight): what a kill
    # leaves there is made visible again when the runtime starts next (runtime.release_in_flight).
    in_flight_dir: str = ""
    # Kinesis mappings this instance polls: the runtime gives them to one instance of the function only, so
    # that each shard has one poller and its records are handled in order.
    streams: list[StreamSource] = field(default_factory=list)
    # Where the shard pollers keep their checkpoints (worker.Checkpoints); kept in the data directory if any.
    checkpoint_dir: str = ""

    @property
    def name(self) -> str:
        return self.instance_name or self.function_name

    def dump(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=2), encoding="utf-8")

    @classmethod
    def load(cls, path: Path) -> WorkerConfig:
        raw = json.loads(path.read_text(encoding="utf-8"))
        raw["queues"] = [QueueSource(**queue) for queue in raw.get("queues", [])]
        raw["streams"] = [StreamSource(**stream) for stream in raw.get("streams", [])]
        url = raw.get("function_url")
        if url:
            url["credentials"] = [LocalCredential(**credential) for credential in url.get("credentials", [])]
        raw["function_url"] = UrlConfig(**url) if url else None
        return cls(**raw)
