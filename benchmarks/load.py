"""`candor bench load` (or `python -m benchmarks.load`): 1,000 photos uploaded at once through the local runtime.

First each distinct photo of the labelled set goes through the pipeline alone: its face count is the reference.
Then N copies (under distinct keys, round-robin over those photos) are uploaded concurrently; the photo
records are polled until every one is final. Pass: every copy COMPLETE with exactly its reference's face
count, and no message in any dead-letter queue. Reported: throughput, and end-to-end latency (upload
acknowledged -> photo record COMPLETE) at p50/p99. Writes the "Load" section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from candor.core.enrolment import photo_id_for

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "faces"
DEFAULT_OUTPUT = REPO / "docs" / "benchmarks.md"
SECTION = "Load"
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}
POLL_S = 0.25


def register(bench_subparsers: Any) -> None:
    parser = bench_subparsers.add_parser("load", help="N photos uploaded concurrently through the local runtime")
    _arguments(parser)
    parser.set_defaults(run=cmd_load)


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--photos", type=int, default=1000, help="copies to upload")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="photos to copy: enroll/*/* and probe/*")
    parser.add_argument("--concurrency", type=int, default=32, help="uploading threads")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds to wait for the pipeline")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="the Markdown file to update")
    parser.add_argument("--no-write", action="store_true", help="leave the Markdown file alone")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON object")


def cmd_load(args: argparse.Namespace) -> int:
    from candor_local.emulator.runtime import LocalEnvironment
    from candor_local.packaging.models import ensure_models

    sources = sorted(
        path
        for path in [*args.data.glob("enroll/*/*"), *args.data.glob("probe/*")]
        if path.suffix.lower() in IMAGE_SUFFIXES
    )
    if not sources:
        raise FileNotFoundError(f"no photos under {args.data}/enroll or {args.data}/probe")
    logs = Path(tempfile.mkdtemp(prefix="candor-load-logs-"))
    with LocalEnvironment.start(stack_name="candor-load", model_dir=ensure_models(), log_dir=logs) as env:
        result = run_load(env, sources, args.photos, args.concurrency, args.timeout)
    result["logs"] = str(logs)
    if args.json:
        print(json.dumps(result))
    else:
        print(_markdown(result))
    if not args.no_write:
        from benchmarks.report import replace_section

        document = args.output.read_text(encoding="utf-8") if args.output.is_file() else None
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(replace_section(document, SECTION, _markdown(result)), encoding="utf-8")
    return 0 if result["passed"] else 1


def run_load(env: Any, sources: list[Path], count: int, concurrency: int, timeout_s: float) -> dict[str, Any]:
    s3 = env.client("s3")
    bucket = env.resources["UploadBucket"]
    photos = env.session.resource("dynamodb", endpoint_url=env.endpoint_url)
    table_name = env.resources["PhotosTable"]
    run_id = uuid.uuid4().hex[:8]

    # The reference: each distinct photo alone through the same pipeline.
    reference_keys = {f"load-{run_id}/reference/{i:03d}{p.suffix}": p for i, p in enumerate(sources)}
    for key, path in reference_keys.items():
        s3.put_object(Bucket=bucket, Key=key, Body=path.read_bytes())
    env.wait_idle(timeout=600)
    reference: dict[Path, int] = {}
    for key, path in reference_keys.items():
        item = photos.Table(table_name).get_item(Key={"photo_id": photo_id_for(bucket, key)})["Item"]
        if item["status"] != "COMPLETE":
            raise RuntimeError(f"reference photo {path.name} did not complete: {item.get('error_message')}")
        reference[path] = int(item["face_count"])

    payloads = {path: path.read_bytes() for path in sources}
    copies = [sources[i % len(sources)] for i in range(count)]
    plan = {f"load-{run_id}/copies/{i:05d}-{path.name}": path for i, path in enumerate(copies)}
    uploaded_at: dict[str, float] = {}

    def upload(key: str) -> None:
        s3.put_object(Bucket=bucket, Key=key, Body=payloads[plan[key]])
        uploaded_at[photo_id_for(bucket, key)] = time.monotonic()

    started = time.monotonic()
    done_at: dict[str, float] = {}
    outcome: dict[str, dict[str, Any]] = {}
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        uploads = [pool.submit(upload, key) for key in plan]
        # Poll while uploading: an early photo can complete before the last upload is acknowledged.
        deadline = started + timeout_s
        pending = {photo_id_for(bucket, key) for key in plan}
        while pending and time.monotonic() < deadline:
            for photo_id, item in _final_records(photos, table_name, pending).items():
                done_at[photo_id] = time.monotonic()
                outcome[photo_id] = item
                pending.discard(photo_id)
            time.sleep(POLL_S)
        for future in uploads:
            future.result()
    upload_s = max(uploaded_at.values()) - started if uploaded_at else 0.0
    finished = max(done_at.values()) if done_at else time.monotonic()
    env.wait_idle(timeout=120)

    wrong = []
    for key, path in plan.items():
        item = outcome.get(photo_id_for(bucket, key))
        if item is None:
            wrong.append(f"{key}: not final after {timeout_s:.0f} s")
        elif item["status"] != "COMPLETE" or int(item["face_count"]) != reference[path]:
            wrong.append(f"{key}: {item['status']} {item.get('face_count')} faces (reference {reference[path]})")
    sqs = env.client("sqs")
    dead_letters = {
        name: int(
            sqs.get_queue_attributes(QueueUrl=env.resources[name], AttributeNames=["ApproximateNumberOfMessages"])[
                "Attributes"
            ]["ApproximateNumberOfMessages"]
        )
        for name in ("DetectDeadLetterQueue", "EmbedDeadLetterQueue")
    }
    latencies = np.array([done_at[p] - uploaded_at[p] for p in done_at if p in uploaded_at])
    elapsed = finished - started
    return {
        "photos": count,
        "distinct_photos": len(sources),
        "faces": sum(reference[path] for path in plan.values()),
        "concurrency": concurrency,
        "completed": sum(1 for item in outcome.values() if item["status"] == "COMPLETE"),
        "face_counts_exact": not wrong,
        "wrong": wrong[:20],
        "dead_letters": dead_letters,
        "upload_s": round(upload_s, 1),
        "elapsed_s": round(elapsed, 1),
        "throughput_photos_per_s": round(count / elapsed, 2) if elapsed > 0 else 0.0,
        "latency_p50_s": round(float(np.percentile(latencies, 50)), 1) if latencies.size else None,
        "latency_p99_s": round(float(np.percentile(latencies, 99)), 1) if latencies.size else None,
        "latency_min_s": round(float(latencies.min()), 2) if latencies.size else None,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "date": datetime.date.today().isoformat(),
        "passed": not wrong and not any(dead_letters.values()),
    }


def _final_records(resource: Any, table_name: str, pending: set[str]) -> dict[str, dict[str, Any]]:
    """The pending photos whose record is COMPLETE or FAILED (BatchGetItem, 100 keys a call)."""
    final: dict[str, dict[str, Any]] = {}
    ids = sorted(pending)
    for start in range(0, len(ids), 100):
        request: dict[str, Any] = {
            table_name: {
                "Keys": [{"photo_id": photo_id} for photo_id in ids[start : start + 100]],
                "ProjectionExpression": "photo_id, #s, face_count, error_message",
                "ExpressionAttributeNames": {"#s": "status"},
                "ConsistentRead": True,
            }
        }
        while request:
            response = resource.batch_get_item(RequestItems=request)
            for item in response["Responses"].get(table_name, []):
                if item["status"] in ("COMPLETE", "FAILED"):
                    final[item["photo_id"]] = item
            request = response.get("UnprocessedKeys") or {}
    return final


def _markdown(result: dict[str, Any]) -> str:
    verdict = (
        "every photo processed, face counts exact"
        if result["face_counts_exact"]
        else "FAILED: " + "; ".join(result["wrong"][:5])
    )
    return f"""\
`candor bench load` (or `python -m benchmarks.load`): {result["photos"]:,} photos (copies of the
{result["distinct_photos"]} labelled photos under distinct keys, {result["faces"]:,} faces) uploaded by
{result["concurrency"]} threads at once into the local runtime (moto server, one worker process per function, as
one Lambda instance each), then every photo record polled until final. Face counts are checked against each
photo processed alone. {result["date"]}, {result["machine"]}.

| figure | value |
| --- | --- |
| outcome | {verdict} |
| photos COMPLETE | {result["completed"]:,} of {result["photos"]:,} |
| dead letters | {sum(result["dead_letters"].values())} |
| all uploads acknowledged after | {result["upload_s"]} s |
| last photo complete after | {result["elapsed_s"]} s |
| throughput | {result["throughput_photos_per_s"]} photos/s |
| end-to-end latency p50 | {result["latency_p50_s"]} s |
| end-to-end latency p99 | {result["latency_p99_s"]} s |
| end-to-end latency, fastest | {result["latency_min_s"]} s |

Latency runs from the upload's acknowledgement to its photo record reading COMPLETE (polled every
{POLL_S} s), so it is mostly time spent queued behind the photos uploaded before it: locally each function
is a single instance sharing the machine's cores, and the backlog drains at the throughput above. On Lambda,
SQS event sources scale out to many concurrent instances, so latency there stays near the per-photo time.
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.load", description=__doc__)
    _arguments(parser)
    return cmd_load(parser.parse_args(argv))


if __name__ == "__main__":
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    sys.exit(main())
