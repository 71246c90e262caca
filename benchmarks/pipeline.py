"""The same photos through the local runtime (S3 → SQS → detect → SQS → embed → index): throughput in a
burst, where its time goes, end-to-end latency at a steady upload rate, and search-by-image latency."""

from __future__ import annotations

import os
import statistics
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.scoring import report_durations_ms
from candor.accountability.policy import MAX_QUOTA
from candor.core.enrolment import META_CONSENT, face_id_for, photo_id_for
from candor.core.settings import DEFAULT_FACE_MATCH_THRESHOLD, ENROLL_PREFIX
from candor_local.cli.client import FINAL_STATUSES, CandorClient
from candor_local.emulator.runtime import LocalEnvironment

# How often the tracker looks at the photos table: the resolution of every latency below.
POLL_S = 0.05
STAGES = ("DetectFunction", "EmbedFunction")
# Enrolment uploads carry a consent reference (object metadata): without one the pipeline indexes nobody.
BENCH_CONSENT = "candor-bench"
# The tracker searches a fresh collection every POLL_S until its enrolments are found, and search_probes
# follows within the same minute: far above the default quotas (60 searches a minute per caller, 600 in
# all), so the benchmark's collections raise theirs.
BENCH_POLICY = {"SearchesPerCallerPerMinute": MAX_QUOTA, "SearchesPerMinute": MAX_QUOTA}


@dataclass
class Upload:
    key: str
    path: Path
    collection: str | None = None  # an enrolment: searchable counts, not just COMPLETE
    sent: float = 0.0
    complete: float | None = None
    searchable: float | None = None
    status: str | None = None

    @property
    def done(self) -> float | None:
        return self.searchable if self.collection else self.complete

    @property
    def latency_s(self) -> float | None:
        return None if self.done is None else self.done - self.sent


class Tracker:
    """Watches the photos table (one consistent BatchGetItem per poll) until every upload is final; an
    enrolment is done when a search with its own photo returns its face."""

    def __init__(self, env: LocalEnvironment, client: CandorClient) -> None:
        self._env = env
        self._client = client
        self._bucket = env.resources["UploadBucket"]
        self._table = env.resources["PhotosTable"]
        self._dynamodb = env.client("dynamodb")
        self._pending: dict[str, Upload] = {}
        self._lock = threading.Lock()

    def add(self, upload: Upload) -> None:
        with self._lock:
            self._pending[photo_id_for(self._bucket, upload.key)] = upload

    def wait(self, expected: int, timeout_s: float = 600.0) -> None:
        """Poll until `expected` uploads have been added and all are final."""
        finished = 0
        deadline = time.monotonic() + timeout_s
        while finished < expected:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{expected - finished} upload(s) not final after {timeout_s:.0f} s")
            with self._lock:
                pending = dict(self._pending)
            waiting = {pid: u for pid, u in pending.items() if u.complete is None}
            for start in range(0, len(waiting), 100):
                ids = list(waiting)[start : start + 100]
                response = self._dynamodb.batch_get_item(
                    RequestItems={
                        self._table: {
                            "Keys": [{"photo_id": {"S": pid}} for pid in ids],
                            "ConsistentRead": True,
                            "ProjectionExpression": "photo_id, #s",
                            "ExpressionAttributeNames": {"#s": "status"},
                        }
                    }
                )
                now = time.monotonic()
                for item in response["Responses"].get(self._table, []):
                    status = item["status"]["S"]
                    if status in FINAL_STATUSES:
                        upload = waiting[item["photo_id"]["S"]]
                        upload.complete, upload.status = now, status
            for pid, upload in pending.items():
                waiting_for_search = upload.complete is not None and upload.collection and upload.searchable is None
                if waiting_for_search and (upload.status != "COMPLETE" or self._found_by_search(upload, pid)):
                    upload.searchable = time.monotonic()
            with self._lock:
                for pid in [pid for pid, u in self._pending.items() if u.done is not None]:
                    del self._pending[pid]
                    finished += 1
            time.sleep(POLL_S)

    def _found_by_search(self, upload: Upload, photo_id: str) -> bool:
        assert upload.collection is not None
        response = self._client.search_all_faces(
            upload.path.read_bytes(), upload.collection, DEFAULT_FACE_MATCH_THRESHOLD, max_matches=10
        )
        wanted = face_id_for(photo_id, 0)  # the enrolled face is the largest, index 0
        return any(match["Face"]["FaceId"] == wanted for face in response["Faces"] for match in face["FaceMatches"])


@dataclass
class StageProfile:
    invocations: int
    busy_s: float  # sum of REPORT durations
    instances: int = 1  # worker processes (the template's ScalingConfig.MaximumConcurrency)
    cpu_s: float | None = None  # CPU time of all its instances during the burst (None where /proc is missing)


@dataclass
class Throughput:
    photos: int
    wall_s: float
    stages: dict[str, StageProfile]
    calls_ms: dict[str, float]  # one call to the endpoint, from this process, median
    # CPU time of this process during the burst: the embedded emulator (moto's threads), the uploads and the
    # tracker's polls. None when the endpoint is not embedded here.
    runtime_cpu_s: float | None = None
    cores: int = 1

    @property
    def photos_per_s(self) -> float:
        return self.photos / self.wall_s


@dataclass
class Latency:
    interval_s: float
    uploads: list[Upload]
    search_ms: list[float] = field(default_factory=list)

    def seconds(self, enrolments: bool | None = None) -> list[float]:
        return [
            u.latency_s
            for u in self.uploads
            if u.latency_s is not None and (enrolments is None or (u.collection is not None) == enrolments)
        ]


def _process_cpu_s(pid: int | None) -> float:
    """User + system CPU seconds of a process so far, from /proc (Linux); 0 when it cannot be read."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _stage_cpu_s(env: LocalEnvironment) -> dict[str, float]:
    return {name: sum(_process_cpu_s(pid) for pid in env.worker_pids(name)) for name in STAGES}


def _own_cpu_s() -> float:
    times = os.times()
    return times.user + times.system


def _log_offsets(env: LocalEnvironment) -> dict[str, int]:
    return {name: env.log_path(name).stat().st_size if env.log_path(name).exists() else 0 for name in STAGES}


def _stage_profiles(
    env: LocalEnvironment, offsets: dict[str, int], cpu_s: dict[str, float | None]
) -> dict[str, StageProfile]:
    profiles = {}
    for name in STAGES:
        with env.log_path(name).open("rb") as log:
            log.seek(offsets[name])
            durations = report_durations_ms(log.read().decode("utf-8", "replace"))
        instances = env.template.functions[name].instances
        profiles[name] = StageProfile(len(durations), sum(durations) / 1000, instances, cpu_s[name])
    return profiles


def _call_latencies(env: LocalEnvironment, sample: Path, repeat: int = 20) -> dict[str, float]:
    """One S3, DynamoDB and SQS call of the kinds the stages make, timed from here (same endpoint)."""
    s3, dynamodb, sqs = env.client("s3"), env.client("dynamodb"), env.client("sqs")
    bucket, table = env.resources["UploadBucket"], env.resources["PhotosTable"]
    key = "bench/calls/sample.jpg"
    s3.put_object(Bucket=bucket, Key=key, Body=sample.read_bytes())
    queue = sqs.create_queue(QueueName="candor-bench-calls")["QueueUrl"]
    item = {"photo_id": {"S": "bench-calls"}, "status": {"S": "COMPLETE"}}
    calls: dict[str, Any] = {
        f"S3 GetObject ({sample.stat().st_size // 1024} KB)": lambda: s3.get_object(Bucket=bucket, Key=key)[
            "Body"
        ].read(),
        "DynamoDB PutItem": lambda: dynamodb.put_item(TableName=table, Item=item),
        "DynamoDB GetItem": lambda: dynamodb.get_item(TableName=table, Key={"photo_id": item["photo_id"]}),
        "SQS SendMessage": lambda: sqs.send_message(QueueUrl=queue, MessageBody="{}"),
        "SQS ReceiveMessage (empty, no wait)": lambda: sqs.receive_message(QueueUrl=queue, WaitTimeSeconds=0),
    }
    sqs.purge_queue(QueueUrl=queue)
    result = {}
    for name, call in calls.items():
        times = []
        for _ in range(repeat):
            started = time.perf_counter()
            call()
            times.append((time.perf_counter() - started) * 1000)
        result[name] = statistics.median(times)
    sqs.delete_queue(QueueUrl=queue)
    return result


def warm_up(env: LocalEnvironment, client: CandorClient, photo: Path, run: str) -> None:
    """One photo through every stage first: the first invocation's costs are cold start, measured apart."""
    tracker = Tracker(env, client)
    upload = Upload(f"bench/{run}/warm/{photo.name}", photo)
    _send(env.client("s3"), env.resources["UploadBucket"], upload)
    tracker.add(upload)
    tracker.wait(1)


def _send(s3: Any, bucket: str, upload: Upload) -> None:
    metadata = {META_CONSENT: BENCH_CONSENT} if upload.collection else {}
    upload.sent = time.monotonic()
    s3.put_object(Bucket=bucket, Key=upload.key, Body=upload.path.read_bytes(), Metadata=metadata)


def create_collection(client: CandorClient, collection: str) -> None:
    """A collection the benchmark may search as often as it measures (BENCH_POLICY)."""
    client.ensure_collection(collection)
    client.call("CandorService.PutCollectionPolicy", {"CollectionId": collection, "Policy": BENCH_POLICY})


def measure_throughput(
    env: LocalEnvironment, client: CandorClient, photos: Sequence[tuple[str, Path]], run: str, rounds: int
) -> Throughput:
    """Every photo `rounds` times, uploaded as fast as one client can, timed from the first upload to the
    last photo COMPLETE."""
    offsets = _log_offsets(env)
    tracker = Tracker(env, client)
    s3 = env.client("s3")
    bucket = env.resources["UploadBucket"]
    uploads = [Upload(f"bench/{run}/t{r}/{name}", path) for r in range(rounds) for name, path in photos]
    bodies = {path: path.read_bytes() for _, path in photos}
    stage_cpu, own_cpu = _stage_cpu_s(env), _own_cpu_s()
    started = time.monotonic()
    for upload in uploads:
        upload.sent = time.monotonic()
        s3.put_object(Bucket=bucket, Key=upload.key, Body=bodies[upload.path])
        tracker.add(upload)
    tracker.wait(len(uploads))
    finished = max(u.complete for u in uploads if u.complete is not None)
    # A worker replaced during the burst would count its predecessor's time as negative: then no figure.
    cpu: dict[str, float | None] = {
        name: used - stage_cpu[name] if used >= stage_cpu[name] else None for name, used in _stage_cpu_s(env).items()
    }
    runtime_cpu = _own_cpu_s() - own_cpu if env.embeds_endpoint else None
    env.wait_idle(timeout=60.0, settle_s=0.5)  # every REPORT line written
    stages = _stage_profiles(env, offsets, cpu)
    failed = [u.key for u in uploads if u.status != "COMPLETE"]
    if failed:
        raise RuntimeError(f"{len(failed)} photo(s) FAILED in the pipeline: {failed[:3]}")
    calls = _call_latencies(env, photos[0][1])
    return Throughput(len(uploads), finished - started, stages, calls, runtime_cpu, os.cpu_count() or 1)


def measure_latency(
    env: LocalEnvironment,
    client: CandorClient,
    enrolment: Sequence[tuple[str, Path]],
    probes: Sequence[Path],
    run: str,
    rounds: int,
    interval_s: float,
) -> tuple[Latency, str]:
    """Upload → searchable at one upload every `interval_s`: each round enrols every enrolment photo into a
    fresh collection (so its face is new there) and uploads every probe. Returns the latencies and the
    last round's collection, which holds every enrolment."""
    collections = [f"bench-{run}-{r}" for r in range(rounds)]
    for collection in collections:
        create_collection(client, collection)
    uploads: list[Upload] = []
    for r, collection in enumerate(collections):
        enrolling = [
            Upload(f"{ENROLL_PREFIX}{collection}/{person}/{path.name}", path, collection) for person, path in enrolment
        ]
        plain = [Upload(f"bench/{run}/l{r}/{path.name}", path) for path in probes]
        # Interleaved, so that enrolments and plain uploads meet the same load.
        for i in range(max(len(enrolling), len(plain))):
            uploads += enrolling[i : i + 1] + plain[i : i + 1]
    tracker = Tracker(env, client)
    s3, bucket = env.client("s3"), env.resources["UploadBucket"]

    def upload_steadily() -> None:
        started = time.monotonic()
        for number, upload in enumerate(uploads):
            time.sleep(max(0.0, started + number * interval_s - time.monotonic()))
            _send(s3, bucket, upload)
            tracker.add(upload)

    uploader = threading.Thread(target=upload_steadily, name="bench-uploader", daemon=True)
    uploader.start()
    tracker.wait(len(uploads))
    uploader.join()
    return Latency(interval_s, uploads), collections[-1]


def search_probes(
    client: CandorClient, probes: Sequence[Path], collection: str, repeat: int = 2
) -> tuple[dict[str, set[str]], list[float]]:
    """Each probe searched `repeat` times (SearchAllFacesByImage, default threshold): the identities found
    the first time (best match of each face) and every call's latency in ms."""
    found: dict[str, set[str]] = {}
    times = []
    for attempt in range(repeat):
        for probe in probes:
            data = probe.read_bytes()
            started = time.perf_counter()
            response = client.search_all_faces(data, collection, DEFAULT_FACE_MATCH_THRESHOLD)
            times.append((time.perf_counter() - started) * 1000)
            if attempt == 0:
                found[probe.name] = {
                    face["FaceMatches"][0]["Face"]["ExternalImageId"]
                    for face in response["Faces"]
                    if face["FaceMatches"]
                }
    return found, times
