"""`candor invoke`: the recorded events through the same handlers, each in a process of its own, as
`sam local invoke` runs them, without Docker."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from candor.adapters.aws import DynamoFaceRepository
from candor.core.faces import BoundingBox, FaceRecord
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
    with pytest.raises(KeyError, match="DetectFunction, EmbedFunction, SearchFunction"):
        attached.invoke("ResizeFunction", {})


def test_shard_function_searches_only_its_own_shard(attached: LocalEnvironment, model_dir: Path) -> None:
    event = json.loads((EVENTS / "shard-search.json").read_text())
    query = np.frombuffer(base64.b64decode(event["queries"]), dtype="<f4")
    rng = np.random.default_rng(3)
    stranger = rng.standard_normal(query.shape[0]).astype(np.float32)
    near = query + 0.3 * stranger / np.linalg.norm(stranger)

    def face(face_id: str, vector: np.ndarray, shard: int) -> FaceRecord:
        unit = (vector / np.linalg.norm(vector)).astype(np.float32)
        box = BoundingBox(1, 1, 10, 10)
        collection = event["collection_id"]
        return FaceRecord(face_id, "photo", box, 0.99, unit, "test", collection, "sample", shard=shard)

    dynamodb = attached.session.resource("dynamodb", endpoint_url=attached.stack.endpoint.url)
    faces = DynamoFaceRepository(attached.resources["FacesTable"], dynamodb)
    faces.save_all([face("shard0-same", query, 0), face("shard0-near", near, 0), face("shard1-same", query, 1)])
    faces.save_all([face("shard0-stranger", stranger, 0)])

    answer = attached.invoke("ShardFunction", event, model_dir)
    # Shard 0's faces from the ByShard index, above the cut-off, best first; shard 1's face is not its to find.
    ((best, best_cosine), (second, _)) = answer["neighbours"][0]
    assert (best, second) == ("shard0-same", "shard0-near") and best_cosine == pytest.approx(1.0, abs=1e-5)
