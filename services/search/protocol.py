"""The face API's wire protocol, read from models rather than typed by hand.

Amazon's model of Rekognition ships with botocore (every operation, shape, required member, range, length,
pattern and enum); Candor's own operations have a model of the same form in `candor-service-2.json`. A request
is decoded and validated against its operation's input shape here, once, before any operation runs, so the
handlers in rekognition.py read members the model has already checked.

Errors follow what Rekognition, a Coral service, answers:
- SerializationException: the body is not JSON (or nested too deep to read), not an object, or a member has the
  wrong JSON type (a list where a string belongs, a number where a string belongs, true where a number belongs);
- ValidationException: the model's constraints: a required member missing or null, too short or too long, a
  value out of range, a string that does not match the member's pattern or enum, a member the operation lacks.
Semantic problems the model cannot state (an image with both Bytes and S3Object, a face id that does not exist)
stay with the operations as InvalidParameterException.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any, cast

from botocore.loaders import create_loader
from botocore.model import ListShape, MapShape, OperationModel, ServiceModel, Shape, StringShape, StructureShape
from botocore.validate import ParamValidator

from candor.core.errors import CandorError

CANDOR_MODEL_FILE = Path(__file__).with_name("candor-service-2.json")
AMZ_JSON = "application/x-amz-json-1.1"
# Shown values are cut to this many characters: an error message never echoes a hostile payload back.
SHOWN_VALUE_CHARS = 80
SHOWN_PROBLEMS = 10

# Candor's reason codes (candor/core/errors.py) and this module's, as the exception names boto3 raises.
EXCEPTION_NAMES = {
    "InvalidImageFormat": "InvalidImageFormatException",
    "ImageTooLarge": "ImageTooLargeException",
    "ImageTooSmall": "InvalidParameterException",
    "InvalidParameter": "InvalidParameterException",
    "NoFaceDetected": "InvalidParameterException",
    "ResourceNotFound": "ResourceNotFoundException",
    "ResourceAlreadyExists": "ResourceAlreadyExistsException",
    "InvalidS3Object": "InvalidS3ObjectException",
    "Conflict": "ConflictException",
    "InvalidPaginationToken": "InvalidPaginationTokenException",
    "ConsentRequired": "AccessDeniedException",
    "PurposeNotDeclared": "AccessDeniedException",
    "AdminOperation": "AccessDeniedException",
    "ThresholdBelowFloor": "InvalidParameterException",
    "QuotaExceeded": "LimitExceededException",
    "FalseMatchRiskTooHigh": "InvalidParameterException",
    "FaceModelMismatch": "InvalidParameterException",
    "IdempotentParameterMismatch": "IdempotentParameterMismatchException",
    "VideoTooLarge": "VideoTooLargeException",
    "ResourceInUse": "ResourceInUseException",
    "InvalidVideo": "InvalidParameterException",
    "Serialization": "SerializationException",
    "Validation": "ValidationException",
    "UnknownOperation": "UnknownOperationException",
}


class SerializationError(CandorError):
    code = "Serialization"


class ValidationError(CandorError):
    code = "Validation"


class UnknownOperationError(CandorError):
    code = "UnknownOperation"


def error_body(error: CandorError) -> dict[str, str]:
    return {"__type": EXCEPTION_NAMES.get(error.code, "InternalServerError"), "Message": error.message}


def _load_models() -> dict[str, ServiceModel]:
    """Both models by target prefix. Candor's file names the Rekognition shapes it reuses (Image, FaceMatchList,
    ...) without copying them: they are taken from Rekognition's model, so they stay exactly Amazon's."""
    rekognition = create_loader().load_service_model("rekognition", "service-2")
    candor = json.loads(CANDOR_MODEL_FILE.read_text(encoding="utf-8"))
    candor["shapes"] = {**rekognition["shapes"], **candor["shapes"]}
    models = [ServiceModel(rekognition, "rekognition"), ServiceModel(candor, "candor")]
    return {model.metadata["targetPrefix"]: model for model in models}


MODELS = _load_models()
_VALIDATOR = ParamValidator()


def operation_model(target: str) -> OperationModel:
    """The operation an X-Amz-Target names (`RekognitionService.SearchFaces`, `CandorService.ErasePerson`)."""
    prefix, _, name = target.partition(".")
    model = MODELS.get(prefix)
    if model is None or name not in model.operation_names:
        named = target if len(target) <= SHOWN_VALUE_CHARS else target[:SHOWN_VALUE_CHARS] + "..."
        raise UnknownOperationError(f"{named or '(no X-Amz-Target)'} is not an operation Candor serves")
    return model.operation_model(name)


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not a JSON number")


def decode_body(body: str | bytes | None, *, base64_encoded: bool = False) -> dict[str, Any]:
    """The request body (as the Function URL event carries it) as a JSON object; an empty body is `{}`."""
    if not body:
        return {}
    try:
        if base64_encoded:
            body = base64.b64decode(body, validate=True)
        # NaN and Infinity are not JSON: a threshold of NaN would pass every range check.
        request = json.loads(body, parse_constant=_no_constant)
    except RecursionError:
        raise SerializationError("the request body is nested too deeply to be read") from None
    except (ValueError, binascii.Error) as error:  # not JSON, not UTF-8, an integer of too many digits
        raise SerializationError(f"the request body is not JSON: {error}") from None
    if not isinstance(request, dict):
        raise SerializationError("the request body must be a JSON object")
    return request


def validate_request(operation: OperationModel, request: dict[str, Any]) -> dict[str, Any]:
    """The request as the operation reads it (JSON nulls dropped, as an absent member), once it conforms to
    the operation's input shape; SerializationError or ValidationError naming every problem otherwise."""
    shape = operation.input_shape
    if shape is None:
        return {}
    request = _without_nulls(request, shape)
    problems = shape_problems(request, shape)
    wrong_types = [message for kind, message in problems if kind == "type"]
    if wrong_types:
        raise SerializationError(_listed(wrong_types))
    if problems:
        count = len(problems)
        detected = f"{count} validation error{'s' if count > 1 else ''} detected: "
        raise ValidationError(detected + _listed([message for _, message in problems]))
    return request


def _listed(messages: list[str]) -> str:
    """The first few problems: 4,096 bad face ids make one line each, and the message would be megabytes."""
    shown = "; ".join(messages[:SHOWN_PROBLEMS])
    return shown if len(messages) <= SHOWN_PROBLEMS else f"{shown}; and {len(messages) - SHOWN_PROBLEMS} more"


def shape_problems(value: dict[str, Any], shape: Shape) -> list[tuple[str, str]]:
    """Every way a request (or a response: the conformance tests) fails its shape, as ("type", message) for a
    member of the wrong JSON type and ("value", message) for a broken constraint."""
    return [*_botocore_problems(value, shape), *_constraint_problems(value, shape, "")]


def _without_nulls(value: Any, shape: Shape) -> Any:
    """A JSON null member is an absent member (a required one is then reported missing)."""
    if isinstance(shape, StructureShape) and isinstance(value, dict):
        members = shape.members
        return {
            name: _without_nulls(item, members[name]) if name in members else item
            for name, item in value.items()
            if item is not None
        }
    if isinstance(shape, ListShape) and isinstance(value, list):
        return [_without_nulls(item, shape.member) for item in value]
    return value


def _show(value: Any) -> str:
    """A value as an error message quotes it: short, and never walked (a deep list would not print)."""
    if isinstance(value, str):
        text = value if len(value) <= SHOWN_VALUE_CHARS else value[:SHOWN_VALUE_CHARS] + "..."
        return repr(text)
    if isinstance(value, bool | int | float):
        text = json.dumps(value)
        return text if len(text) <= SHOWN_VALUE_CHARS else text[:SHOWN_VALUE_CHARS] + "..."
    return {dict: "an object", list: "a list", type(None): "null"}.get(type(value), type(value).__name__)


_JSON_TYPES = {
    "structure": "an object",
    "map": "an object",
    "list": "a list",
    "string": "a string",
    "blob": "a base64 string",
    "boolean": "true or false",
    "integer": "an integer",
    "long": "an integer",
    "float": "a number",
    "double": "a number",
    "timestamp": "a number of seconds",
}


def _join(parent: str, name: str) -> str:
    parent = parent.lstrip(".")
    return f"{parent}.{name}" if parent else name


def _violation(path: str, value: Any, constraint: str) -> str:
    return f"Value {_show(value)} at '{path}' failed to satisfy constraint: {constraint}"


def _botocore_problems(request: dict[str, Any], shape: Shape) -> Iterator[tuple[str, str]]:
    """botocore's validator: types, required members, minimum lengths and values, unknown members."""
    report = _VALIDATOR.validate(request, shape)
    for error_type, name, details in getattr(report, "_errors", []):
        path = name.lstrip(".") or "input"
        if error_type == "missing required field":
            yield "value", _violation(_join(name, details["required_name"]), None, "Member must not be null")
        elif error_type == "unknown field":
            valid = ", ".join(details["valid_names"])
            yield "value", f"'{_join(name, details['unknown_param'])}' is not a member of {path}; it has {valid}"
        elif error_type == "invalid type":
            yield "type", f"{path} must be {_expected(shape, name)}, not {_show(details['param'])}"
        elif error_type == "invalid range":
            constraint = f"Member must have value greater than or equal to {details['min_allowed']}"
            yield "value", _violation(path, details["param"], constraint)
        elif error_type == "invalid length":
            constraint = f"Member must have length greater than or equal to {details['min_allowed']}"
            yield "value", _violation(path, details["param"], constraint)
        else:
            yield "value", f"{path} is not valid: {error_type}"


def _expected(shape: Shape, name: str) -> str:
    """What the member botocore names (`.Image.S3Object.Bucket`, `.FaceIds[0]`) must be, in JSON's words."""
    try:
        for part in filter(None, name.split(".")):
            member, _, index = part.partition("[")
            if member:
                shape = shape.members[member] if isinstance(shape, StructureShape) else cast(MapShape, shape).value
            for _ in range(index.count("]")):
                shape = shape.member if isinstance(shape, ListShape) else cast(MapShape, shape).value
    except (AttributeError, KeyError):  # a map key with a dot in it: the name no longer says where
        return "another type"
    return _JSON_TYPES.get(shape.type_name, "another type")


_INT_RANGES = {"integer": (-(2**31), 2**31 - 1), "long": (-(2**63), 2**63 - 1)}


def _constraint_problems(value: Any, shape: Shape, path: str) -> Iterator[tuple[str, str]]:
    """What botocore's validator leaves out: maximum lengths and values, patterns, enums, and a boolean given
    as a number (JSON true is not 1). A value of the wrong type is botocore's to report, so it is skipped here."""
    kind, limits = shape.type_name, shape.metadata
    if isinstance(shape, StructureShape) and isinstance(value, dict):
        for name, member in shape.members.items():
            if name in value:
                yield from _constraint_problems(value[name], member, _join(path, name))
    elif isinstance(shape, ListShape) and isinstance(value, list):
        if "max" in limits and len(value) > limits["max"]:
            yield "value", _violation(path, value, f"Member must have length less than or equal to {limits['max']}")
        for index, item in enumerate(value):
            yield from _constraint_problems(item, shape.member, f"{path}[{index}]")
    elif isinstance(shape, MapShape) and isinstance(value, dict):
        if "max" in limits and len(value) > limits["max"]:
            yield "value", _violation(path, value, f"Member must have length less than or equal to {limits['max']}")
        for key, item in value.items():
            yield from _constraint_problems(key, shape.key, f"{path} (key: {_show(key)})")
            yield from _constraint_problems(item, shape.value, f"{path}.{key}")
    elif isinstance(shape, StringShape) and isinstance(value, str):
        if "max" in limits and len(value) > limits["max"]:
            yield "value", _violation(path, value, f"Member must have length less than or equal to {limits['max']}")
            return  # a pattern is not run over a value already refused for its length
        if "pattern" in limits and not pattern(limits["pattern"]).fullmatch(value):
            constraint = f"Member must satisfy regular expression pattern: {limits['pattern']}"
            yield "value", _violation(path, value, constraint)
        if shape.enum and value not in shape.enum:
            yield "value", _violation(path, value, f"Member must satisfy enum value set: [{', '.join(shape.enum)}]")
    elif kind in ("integer", "long", "float", "double") and isinstance(value, bool | int | float):
        if isinstance(value, bool):
            yield "type", f"{path} must be {_JSON_TYPES[kind]}, not {_show(value)}"
            return
        low, high = _INT_RANGES.get(kind, (None, None))
        if low is not None and high is not None and isinstance(value, int) and not low <= value <= high:
            yield "type", f"{path} must be an integer from {low} to {high}, not {_show(value)}"
        elif "max" in limits and value > limits["max"]:
            yield "value", _violation(path, value, f"Member must have value less than or equal to {limits['max']}")
    # Blobs: their limit is on the decoded bytes, which the operation checks (ImageTooLargeException).


# Java's Unicode classes in the model's patterns, as Python's `re` can read them inside a character class.
# \p{L} and \p{N} together (the only way the model uses them) are exactly \w less "_", and each pattern that
# names them lists "_" itself; \p{Z} is the separator characters, listed.
_JAVA_CLASSES = {
    r"\p{L}": r"\w",
    r"\p{N}": r"\w",
    r"\p{Z}": r"\u0020\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000",
}


@cache
def pattern(java_pattern: str) -> re.Pattern[str]:
    """A model pattern compiled for Python; a value must match all of it, as Coral's validation requires."""
    translated = java_pattern
    for java, python in _JAVA_CLASSES.items():
        translated = translated.replace(java, python)
    return re.compile(translated)


def read_request(target: str, body: str | bytes | None) -> tuple[OperationModel, dict[str, Any]]:
    """The operation a request names and its input, decoded and validated against that operation's model."""
    operation = operation_model(target)
    return operation, validate_request(operation, decode_body(body))
