"""Cold start of each function (a fresh process: interpreter, handler import with its models, first
invocation on the live stack) and the size of each deployable artefact against Lambda's limit."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from candor.core.enrolment import face_id_for, photo_id_for
from candor.core.faces import DetectedFace
from candor_local.emulator.runtime import LocalEnvironment
from candor_local.packaging.artifacts import Artefact, estimate, installed_bytes, requirement_names

REPO = Path(__file__).resolve().parents[1]
EVENTS = REPO / "events"
PROBE = Path(__file__).with_name("cold_start_probe.py")


@dataclass
class ColdStart:
    function: str
    interpreter_s: float
    init_s: float
    first_result_s: float


def artefacts(env: LocalEnvironment, model_dir: Path) -> tuple[list[Artefact], dict[str, int]]:
    """Each function with its layers as `sam build` makes them (the estimate tests/test_artifacts.py holds
    to Lambda's limit), and the runtime dependencies' sizes."""
    sizes = installed_bytes(requirement_names(REPO / "requirements" / "runtime.txt"))
    return estimate(env.template, model_dir), sizes


def _events(env: LocalEnvironment, photo: Path, faces: Sequence[DetectedFace], collection: str) -> dict[str, Any]:
    """A recorded event per function (events/), pointed at a photo uploaded to the live stack."""
    bucket = env.resources["UploadBucket"]
    key = f"bench/cold-start/{photo.name}"
    env.client("s3").put_object(Bucket=bucket, Key=key, Body=photo.read_bytes())

    detect = json.loads((EVENTS / "detect-s3-upload.json").read_text())
    detect["Records"] = detect["Records"][:1]
    notification = json.loads(detect["Records"][0]["body"])
    notification["Records"][0]["s3"]["bucket"]["name"] = bucket
    notification["Records"][0]["s3"]["object"]["key"] = key
    detect["Records"][0]["body"] = json.dumps(notification)

    embed = json.loads((EVENTS / "embed-faces.json").read_text())
    embed["Records"] = embed["Records"][:1]
    photo_id = photo_id_for(bucket, key)
    request = {
        "photo_id": photo_id,
        "bucket": bucket,
        "key": key,
        "version_id": None,
        "face_ids": [face_id_for(photo_id, i) for i in range(len(faces))],
        "faces": [face.to_dict() for face in faces],
        "enrolment": None,
    }
    embed["Records"][0]["body"] = json.dumps(request)

    search = json.loads((EVENTS / "search-faces-by-image.json").read_text())
    body = json.loads(search["body"])
    body.update({"CollectionId": collection, "Image": {"S3Object": {"Bucket": bucket, "Name": key}}})
    search["body"] = json.dumps(body)
    return {"DetectFunction": detect, "EmbedFunction": embed, "SearchFunction": search}


def _function_env(env: LocalEnvironment, logical_id: str, model_dir: Path) -> dict[str, str]:
    """What the runtime gives a worker: the template's variables, Lambda's own, the endpoint."""
    spec = env.template.functions[logical_id]
    own = ("AWS_", "POWERTOOLS_", "LAMBDA_", "_HANDLER")
    variables = {k: v for k, v in os.environ.items() if not k.startswith(own)}
    variables.update(env.stack.function_environment(spec))
    variables.update(env.environment())
    variables.update(
        {
            "MODEL_DIR": str(model_dir),
            "AWS_LAMBDA_FUNCTION_NAME": env.stack.function_name(logical_id),
            "AWS_SAM_LOCAL": "true",
            "LAMBDA_TASK_ROOT": str(spec.code_dir),
            "POWERTOOLS_LOG_LEVEL": "WARNING",  # the probe's stdout carries its result
        }
    )
    return variables


def measure_cold_starts(
    env: LocalEnvironment, model_dir: Path, photo: Path, faces: Sequence[DetectedFace], collection: str, repeat: int = 2
) -> list[ColdStart]:
    """Best of `repeat` fresh processes per function (the first may pay for a cold page cache)."""
    events = _events(env, photo, faces, collection)
    results = []
    with tempfile.TemporaryDirectory(prefix="candor-cold-") as scratch:
        for logical_id, event in events.items():
            spec = env.template.functions[logical_id]
            event_file = Path(scratch) / f"{logical_id}.json"
            event_file.write_text(json.dumps(event))
            best: ColdStart | None = None
            for _ in range(repeat):
                python_path = json.dumps([str(p) for p in spec.python_path])
                spawned = time.time()
                completed = subprocess.run(
                    [sys.executable, str(PROBE), repr(spawned), spec.handler, python_path, str(event_file)],
                    env=_function_env(env, logical_id, model_dir),
                    capture_output=True,
                    text=True,
                    timeout=300,
                    check=False,
                )
                lines = completed.stdout.strip().splitlines()
                if completed.returncode != 0 or not lines:
                    raise RuntimeError(f"{logical_id} cold start failed:\n{completed.stderr[-2000:]}")
                raw = json.loads(lines[-1])
                _check_result(logical_id, raw["result"])
                timing = ColdStart(logical_id, raw["interpreter_s"], raw["init_s"], raw["first_result_s"])
                if best is None or timing.first_result_s < best.first_result_s:
                    best = timing
            assert best is not None
            results.append(best)
    return results


def _check_result(logical_id: str, result: Any) -> None:
    """A cold start counts only when the first invocation did its work."""
    if logical_id == "SearchFunction":
        if not isinstance(result, dict) or result.get("statusCode") != 200:
            raise RuntimeError(f"{logical_id}: first invocation answered {str(result)[:300]}")
    elif isinstance(result, dict) and result.get("batchItemFailures"):
        raise RuntimeError(f"{logical_id}: first invocation failed its record: {result}")
