"""The face API's protocol module (services/search/protocol.py): requests decoded and validated against
botocore's model of Rekognition and Candor's own model, with the errors a client sees for bad ones."""

from __future__ import annotations

import base64
import importlib
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
SEARCH = ROOT / "services" / "search"
VALID_FACE_ID = "11111111-2222-4333-8444-555555555555"
TAG_KEY = r"^(?!aws:)[\p{L}\p{Z}\p{N}_.:/=+\-@]*$"


@pytest.fixture(scope="module")
def protocol() -> ModuleType:
    """Imported as the search function imports it: services/search on the path, module name `protocol`."""
    sys.path.insert(0, str(SEARCH))
    try:
        return importlib.import_module("protocol")
    finally:
        sys.path.remove(str(SEARCH))


def _refusal(protocol: ModuleType, target: str, request: Any) -> tuple[str, str]:
    with pytest.raises(protocol.CandorError) as refused:
        protocol.validate_request(protocol.operation_model(target), request)
    body = protocol.error_body(refused.value)
    return body["__type"], body["Message"]


def test_every_pattern_of_both_models_compiles(protocol: ModuleType) -> None:
    compiled = 0
    for model in protocol.MODELS.values():
        for name in model.shape_names:
            metadata = model.shape_for(name).metadata
            if "pattern" in metadata:
                protocol.pattern(metadata["pattern"])
                compiled += 1
    assert compiled > 20


def test_javas_unicode_classes_are_read_as_java_reads_them(protocol: ModuleType) -> None:
    tag_key = protocol.pattern(TAG_KEY)
    assert tag_key.fullmatch("Überprüfung 2026_ß:/=+-@")
    assert tag_key.fullmatch("名前\u3000٣")  # CJK letters, an ideographic space, an Arabic-Indic digit
    assert not tag_key.fullmatch("aws:reserved")
    assert not tag_key.fullmatch("tab\tseparated")  # \p{Z} is separators, not every kind of white space
    # A model pattern must match the whole value, as Coral's validation requires.
    assert not protocol.pattern(r"[a-zA-Z0-9_.\-]+").fullmatch("ok-prefix but not all")


def test_a_valid_request_passes_with_its_nulls_dropped(protocol: ModuleType) -> None:
    request = {"CollectionId": "people", "FaceId": VALID_FACE_ID, "MaxFaces": 5, "FaceMatchThreshold": None}
    operation = protocol.operation_model("RekognitionService.SearchFaces")
    assert protocol.validate_request(operation, request) == {
        "CollectionId": "people",
        "FaceId": VALID_FACE_ID,
        "MaxFaces": 5,
    }
    policy = {"CollectionId": "c", "Policy": {"Purposes": ["fraud"], "Identification": True, "MaxFalseMatchRisk": 0.01}}
    assert protocol.validate_request(protocol.operation_model("CandorService.CreateCollection"), policy) == policy


# (target, request, exception, part of the message): what Rekognition answers to each, and why.
REFUSALS = [
    # A required member that is null is missing (Coral reads null as absent).
    ("RekognitionService.CreateCollection", {"CollectionId": None}, "ValidationException", "must not be null"),
    ("RekognitionService.CreateCollection", {}, "ValidationException", "'CollectionId' failed"),
    # A member of the wrong JSON type cannot be read: Coral's SerializationException.
    ("RekognitionService.CreateCollection", {"CollectionId": 42}, "SerializationException", "must be a string"),
    ("RekognitionService.CreateCollection", {"CollectionId": True}, "SerializationException", "must be a string"),
    (
        "RekognitionService.IndexFaces",
        {"CollectionId": "c", "Image": {"Bytes": "aGk="}, "DetectionAttributes": "ALL"},
        "SerializationException",
        "DetectionAttributes must be a list",
    ),
    (
        "RekognitionService.DetectFaces",
        {"Image": {"S3Object": {"Bucket": ["b"], "Name": "k.jpg"}}},
        "SerializationException",
        "Image.S3Object.Bucket must be a string, not a list",
    ),
    (
        "RekognitionService.DetectFaces",
        {"Image": {"S3Object": {"Bucket": "bucket", "Name": 7}}},
        "SerializationException",
        "Image.S3Object.Name must be a string",
    ),
    (
        "RekognitionService.DetectFaces",
        {"Image": {"S3Object": {"Bucket": "bucket", "Name": "k.jpg", "Version": 3}}},
        "SerializationException",
        "Image.S3Object.Version must be a string",
    ),
    (
        "RekognitionService.SearchFaces",
        {"CollectionId": "c", "FaceId": VALID_FACE_ID, "MaxFaces": True},
        "SerializationException",
        "MaxFaces must be an integer, not true",
    ),
    ("RekognitionService.DeleteFaces", {"CollectionId": "c", "FaceIds": [[[]]]}, "SerializationException", "[0]"),
    # The model's constraints: patterns, lengths, ranges, enums, members the operation has.
    (
        "RekognitionService.DetectFaces",
        {"Image": {"S3Object": {"Bucket": "../../etc", "Name": "passwd"}}},
        "ValidationException",
        "'Image.S3Object.Bucket' failed to satisfy constraint: Member must satisfy regular expression pattern",
    ),
    (
        "RekognitionService.CreateCollection",
        {"CollectionId": "not a valid id!"},
        "ValidationException",
        "regular expression pattern: [a-zA-Z0-9_.\\-]+",
    ),
    (
        "RekognitionService.CreateCollection",
        {"CollectionId": "x" * 256},
        "ValidationException",
        "length less than or equal to 255",
    ),
    (
        "RekognitionService.DeleteFaces",
        {"CollectionId": "c", "FaceIds": [VALID_FACE_ID] * 4097},
        "ValidationException",
        "'FaceIds' failed to satisfy constraint: Member must have length less than or equal to 4096",
    ),
    (
        "RekognitionService.DeleteFaces",
        {"CollectionId": "c", "FaceIds": []},
        "ValidationException",
        "length greater than or equal to 1",
    ),
    (
        "RekognitionService.SearchFaces",
        {"CollectionId": "c", "FaceId": "not-a-face-id"},
        "ValidationException",
        "'FaceId' failed to satisfy constraint",
    ),
    (
        "RekognitionService.SearchFaces",
        {"CollectionId": "c", "FaceId": VALID_FACE_ID, "FaceMatchThreshold": 100.5},
        "ValidationException",
        "value less than or equal to 100",
    ),
    (
        "RekognitionService.ListFaces",
        {"CollectionId": "c", "MaxResults": -1},
        "ValidationException",
        "value greater than or equal to 0",
    ),
    (
        "RekognitionService.IndexFaces",
        {"CollectionId": "c", "Image": {"Bytes": "aGk="}, "QualityFilter": "BEST"},
        "ValidationException",
        "enum value set: [NONE, AUTO, LOW, MEDIUM, HIGH]",
    ),
    (
        "RekognitionService.IndexFaces",
        {"CollectionId": "c", "Image": {"Bytes": "aGk="}, "ExternalImageId": "no spaces"},
        "ValidationException",
        "'ExternalImageId' failed",
    ),
    (
        "RekognitionService.CreateCollection",
        {"CollectionId": "c", "Policy": {"Purposes": ["fraud"]}},
        "ValidationException",
        "'Policy' is not a member of input",
    ),
    (
        "CandorService.ReindexCollection",
        {"CollectionId": "c", "DropUnreindexable": "yes"},
        "SerializationException",
        "DropUnreindexable must be true or false",
    ),
    (
        "CandorService.PutCollectionPolicy",
        {"CollectionId": "c", "Policy": {"Purposes": "fraud"}},
        "SerializationException",
        "Policy.Purposes must be a list",
    ),
    ("CandorService.ErasePerson", {"CollectionId": "c"}, "ValidationException", "'PersonId' failed"),
]


@pytest.mark.parametrize(("target", "request_body", "exception", "message"), REFUSALS)
def test_a_request_that_breaks_the_model_is_refused_as_rekognition_refuses_it(
    protocol: ModuleType, target: str, request_body: Any, exception: str, message: str
) -> None:
    kind, text = _refusal(protocol, target, request_body)
    assert (kind, message in text) == (exception, True), text


def test_every_problem_is_named_and_a_long_value_is_not_echoed(protocol: ModuleType) -> None:
    kind, message = _refusal(
        protocol,
        "RekognitionService.SearchFaces",
        {"CollectionId": "c" * 8000, "FaceId": "nope", "MaxFaces": 5000},
    )
    assert kind == "ValidationException" and message.startswith("3 validation errors detected: ")
    assert len(message) < 1000
    kind, message = _refusal(protocol, "RekognitionService.DeleteFaces", {"CollectionId": "c", "FaceIds": ["x"] * 4096})
    assert kind == "ValidationException" and message.startswith("4096 validation errors detected: ")
    assert message.endswith("; and 4086 more") and len(message) < 3000


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
        ('{"FaceMatchThreshold": NaN}', "NaN is not a JSON number"),
        ('{"FaceMatchThreshold": -Infinity}', "Infinity is not a JSON number"),
        ('{"MaxFaces": 1' + "0" * 5000 + "}", "not JSON"),
        ("[]", "must be a JSON object"),
        ('"CollectionId"', "must be a JSON object"),
        ("{'CollectionId': 'c'}", "not JSON"),
    ],
)
def test_a_body_that_is_not_a_json_object_is_a_serialization_error(
    protocol: ModuleType, body: str, message: str
) -> None:
    with pytest.raises(protocol.SerializationError, match=message):
        protocol.decode_body(body)


def test_a_base64_body_is_decoded_and_must_be_utf8(protocol: ModuleType) -> None:
    encoded = base64.b64encode(json.dumps({"CollectionId": "c"}).encode()).decode()
    assert protocol.decode_body(encoded, base64_encoded=True) == {"CollectionId": "c"}
    assert protocol.decode_body("", base64_encoded=True) == {}
    with pytest.raises(protocol.SerializationError):
        protocol.decode_body(base64.b64encode(b'{"CollectionId": "\xff"}').decode(), base64_encoded=True)
    with pytest.raises(protocol.SerializationError):
        protocol.decode_body("not base64!", base64_encoded=True)


def test_operations_are_found_by_their_target(protocol: ModuleType) -> None:
    assert protocol.operation_model("RekognitionService.SearchFacesByImage").name == "SearchFacesByImage"
    assert protocol.operation_model("CandorService.ErasePerson").metadata["targetPrefix"] == "CandorService"
    for target in ("", "RekognitionService.NoSuchThing", "CandorService.DetectLabels", "Other.CreateCollection"):
        with pytest.raises(protocol.UnknownOperationError):
            protocol.operation_model(target)
    assert protocol.error_body(protocol.UnknownOperationError("x"))["__type"] == "UnknownOperationException"
    with pytest.raises(protocol.UnknownOperationError) as unknown:
        protocol.operation_model("RekognitionService." + "X" * 8000)
    assert len(unknown.value.message) < 200


def test_the_models_load_in_a_small_part_of_a_cold_start() -> None:
    """Both models are read once, at import; importing the module stays well under a tenth of a second."""
    script = (
        "import sys, time; sys.path.insert(0, sys.argv[1]); import botocore.model, candor.core.errors;"
        "t = time.perf_counter(); import protocol; print(time.perf_counter() - t)"
    )
    elapsed = min(
        float(
            subprocess.run(
                [sys.executable, "-c", script, str(SEARCH)], capture_output=True, text=True, check=True
            ).stdout
        )
        for _ in range(3)
    )
    assert elapsed < 0.25, f"importing protocol took {elapsed:.3f} s"
