"""Amazon S3 Vectors' metadata filter, evaluated on one vector's metadata: what the in-memory vector store and
the emulator's QueryVectors answer with, so a filter means the same thing in a unit test, locally and on AWS.

The operators are S3 Vectors' own (docs.aws.amazon.com/AmazonS3/latest/userguide/s3-vectors-metadata-filtering.html):
`{"key": value}` is `{"key": {"$eq": value}}`; `$eq`, `$ne`, `$gt`, `$gte`, `$lt`, `$lte`, `$in`, `$nin`,
`$exists` on a key; `$and` and `$or` over a list of filters. A list-valued key matches `$eq` when it holds the value.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

_MISSING = object()


def matches(metadata: Mapping[str, Any], where: Mapping[str, Any] | None) -> bool:
    """Whether metadata passes the filter (no filter: every vector does)."""
    if not where:
        return True
    for key, condition in where.items():
        if key == "$and":
            if not all(matches(metadata, part) for part in condition):
                return False
        elif key == "$or":
            if not any(matches(metadata, part) for part in condition):
                return False
        elif key.startswith("$"):
            raise ValueError(f"unknown filter operator {key!r}")
        elif not _holds(metadata.get(key, _MISSING), condition):
            return False
    return True


def _holds(value: Any, condition: Any) -> bool:
    if not isinstance(condition, Mapping):
        condition = {"$eq": condition}
    for operator, operand in condition.items():
        test = _OPERATORS.get(operator)
        if test is None:
            raise ValueError(f"unknown filter operator {operator!r}")
        if not test(value, operand):
            return False
    return True


def _eq(value: Any, operand: Any) -> bool:
    if value is _MISSING:
        return False
    return operand in value if isinstance(value, list) else bool(value == operand)


def _ordered(compare: Callable[[Any, Any], bool]) -> Callable[[Any, Any], bool]:
    def test(value: Any, operand: Any) -> bool:
        return value is not _MISSING and isinstance(value, (int, float)) and compare(value, operand)

    return test


_OPERATORS: dict[str, Callable[[Any, Any], bool]] = {
    "$eq": _eq,
    "$ne": lambda value, operand: not _eq(value, operand),
    "$in": lambda value, operand: any(_eq(value, item) for item in operand),
    "$nin": lambda value, operand: not any(_eq(value, item) for item in operand),
    "$exists": lambda value, operand: (value is not _MISSING) == bool(operand),
    "$gt": _ordered(lambda value, operand: value > operand),
    "$gte": _ordered(lambda value, operand: value >= operand),
    "$lt": _ordered(lambda value, operand: value < operand),
    "$lte": _ordered(lambda value, operand: value <= operand),
}
