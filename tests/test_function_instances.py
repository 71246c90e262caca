"""Several instances of one function (its SQS event source's ScalingConfig.MaximumConcurrency), as Lambda
runs them: the template says how many, the local runtime starts that many worker processes on the queue,
each named in the logs, and the queue keeps them apart."""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from candor_local.emulator.runtime import LocalEnvironment
from candor_local.emulator.template import DEFAULT_TEMPLATE_PATH, TemplateError, load_template

FIXTURE_TEMPLATE = """\
AWSTemplateFormatVersion: "2010-09-09"
Transform: AWS::Serverless-2016-10-31
Resources:
  WorkQueue:
    Type: AWS::SQS::Queue
    Properties:
      VisibilityTimeout: 30
  PairFunction:
    Type: AWS::Serverless::Function
    Properties:
      CodeUri: fn/
      Runtime: python3.12
      Handler: app.lambda_handler
      Timeout: 10
      Events:
        Work:
          Type: SQS
          Properties:
            Queue: !GetAtt WorkQueue.Arn
            BatchSize: 1
            ScalingConfig:
              MaximumConcurrency: {concurrency}
"""

# Each delivery, with the process that handled it and when, as one line of the function's log.
FIXTURE_APP = """\
import json
import os
import tempfile
import time


def lambda_handler(event, context):
    started = time.time()
    time.sleep(0.5)
    for record in event["Records"]:
        entry = {"id": record["body"], "pid": os.getpid(), "tmp": tempfile.gettempdir()}
        print(json.dumps({**entry, "started": started, "ended": time.time()}))
"""


def _write_stack(root: Path, concurrency: str) -> Path:
    (root / "fn").mkdir(parents=True, exist_ok=True)
    (root / "fn" / "app.py").write_text(FIXTURE_APP, encoding="utf-8")
    template = root / "template.yaml"
    template.write_text(FIXTURE_TEMPLATE.replace("{concurrency}", concurrency), encoding="utf-8")
    return template


def test_the_shipped_template_runs_two_instances_of_each_pipeline_stage_and_one_search_function() -> None:
    functions = load_template(DEFAULT_TEMPLATE_PATH).functions
    assert functions["DetectFunction"].instances == 2
    assert functions["EmbedFunction"].instances == 2
    # Its Function URL is one port: one instance, whatever the template says.
    assert functions["SearchFunction"].instances == 1


@pytest.mark.parametrize("concurrency", ["1", "1001", "lots"])
def test_a_maximum_concurrency_lambda_would_refuse_is_refused(tmp_path: Path, concurrency: str) -> None:
    with pytest.raises(TemplateError, match="MaximumConcurrency"):
        load_template(_write_stack(tmp_path, concurrency))


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalEnvironment]:
    root = tmp_path_factory.mktemp("pair-stack")
    template = _write_stack(root, "2")
    with LocalEnvironment.start(stack_name="pair", template_path=template, log_dir=root / "logs") as environment:
        yield environment


@pytest.mark.integration
def test_each_instance_polls_the_queue_and_every_message_is_handled_once(env: LocalEnvironment) -> None:
    pids = env.worker_pids("PairFunction")
    assert len(pids) == 2 and None not in pids and len(set(pids)) == 2
    sqs = env.client("sqs")
    ids = [f"message-{n}" for n in range(8)]
    for message in ids:
        sqs.send_message(QueueUrl=env.resources["WorkQueue"], MessageBody=message)
    env.wait_idle(timeout=60, settle_s=0.5)
    time.sleep(0.2)  # the last lines reach the log file

    text = env.log_path("PairFunction").read_text(encoding="utf-8")
    handled = [json.loads(line) for line in text.splitlines() if line.startswith('{"id"')]
    assert sorted(entry["id"] for entry in handled) == ids
    assert {entry["pid"] for entry in handled} == set(pids)
    # Two at a time: some invocation of one instance ran while one of the other did.
    first, second = sorted({entry["pid"] for entry in handled})
    spans = {pid: [(e["started"], e["ended"]) for e in handled if e["pid"] == pid] for pid in (first, second)}
    assert any(a0 < b1 and b0 < a1 for a0, a1 in spans[first] for b0, b1 in spans[second])
    # Each instance has a /tmp of its own, as each Lambda sandbox has (a video one downloads is its own).
    tmp_of = {pid: {e["tmp"] for e in handled if e["pid"] == pid} for pid in (first, second)}
    assert all(len(dirs) == 1 for dirs in tmp_of.values()) and tmp_of[first] != tmp_of[second]
    assert not tmp_of[first] & {tempfile.gettempdir()}
    # One log for the function, each instance named in the runtime's lines.
    assert "PairFunction#1 ready" in text and "PairFunction#2 ready" in text
