"""`candor invoke`: the recorded events through the same handlers, each in a process of its own, as
`sam local invoke` runs them, without Docker."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from candor_local.emulator.runtime import LocalEnvironment

EVENTS = Path(__file__).resolve().parents[1] / "events"


@pytest.fixture(scope="module")
def attached() -> Iterator[LocalEnvironment]:
    environment = LocalEnvironment.attach("candor-invoke")
    yield environment
    environment.stop()


def test_search_function_answers_a_recorded_api_request(attached: LocalEnvironment, model_dir: Path) -> None:
    event = json.loads((EVENTS / "search-create-collection.json").read_text())
    response = attached.invoke("SearchFunction", event, model_dir)
    assert response["statusCode"] == 200
    assert json.loads(response["body"])["CollectionArn"].endswith(":collection/demo")


def test_detect_function_consumes_a_malformed_batch(attached: LocalEnvironment, model_dir: Path) -> None:
    event = json.loads((EVENTS / "detect-malformed-batch.json").read_text())
    assert attached.invoke("DetectFunction", event, model_dir) == {"batchItemFailures": []}


def test_an_unknown_function_is_named_in_the_error(attached: LocalEnvironment) -> None:
    with pytest.raises(KeyError, match="DetectFunction, DigestFunction, EmbedFunction, LiveFunction, SearchFunction"):
        attached.invoke("ResizeFunction", {})


def test_live_function_reads_recorded_frames_no_processor_runs_on(attached: LocalEnvironment, model_dir: Path) -> None:
    event = json.loads((EVENTS / "live-frames.json").read_text())
    counts = attached.invoke("LiveFunction", event, model_dir)
    assert counts == {"analysed": 0, "dropped": 0, "bad": 0, "unread": 2}


def test_video_function_consumes_messages_of_no_job_and_not_json(attached: LocalEnvironment, model_dir: Path) -> None:
    event = json.loads((EVENTS / "video-job-messages.json").read_text())
    assert attached.invoke("VideoFunction", event, model_dir) == {"batchItemFailures": []}
