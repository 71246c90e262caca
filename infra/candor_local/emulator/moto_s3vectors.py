"""QueryVectors for moto's S3 Vectors, which moto (5.2.1 here; 5.2.5 too) implements without it (HTTP 404; its
maintainer has said he does not know how to emulate an approximate search meaningfully). Added to the moto this
process starts: an exact search, cosine (or euclidean) distance over every vector whose metadata passes the
filter (S3 Vectors' operators, candor/core/vector_filter.py), nearest first, ties by key, topK at most 100
with nextToken paging past it. Exact, so the emulator's answer is the reference an approximate engine's recall
is measured against.

Pinned to the moto version it was written for (requirements/dev.txt): tests/test_vector_engines.py fails the
day moto ships its own QueryVectors (or moves on), so this addition can go.
"""

from __future__ import annotations

import base64
import threading
from typing import Any

import moto
import numpy as np
from moto.core.responses import ActionResult
from moto.s3vectors import models as s3vectors_models
from moto.s3vectors import urls as s3vectors_urls
from moto.s3vectors.exceptions import ValidationError
from moto.s3vectors.responses import S3VectorsResponse

from candor.core.vector_filter import matches

PINNED_MOTO_VERSION = "5.2.1"  # requirements/dev.txt
MAX_TOP_K = 100
# Whether moto answered QueryVectors before this module added it: the test that fails when it does reads this.
MOTO_HAS_QUERY_VECTORS = hasattr(S3VectorsResponse, "query_vectors")
_ADDED = "_candor_query_vectors"
_lock = threading.RLock()
_CACHE = "_candor_matrix"


def add_query_vectors() -> None:
    """Adds QueryVectors (and a GetVectors by key lookup, moto's being a scan per key) to moto's S3 Vectors;
    nothing when moto has its own. Idempotent."""
    if MOTO_HAS_QUERY_VECTORS or getattr(S3VectorsResponse, _ADDED, False):
        return
    S3VectorsResponse.query_vectors = _query_vectors  # type: ignore[attr-defined]
    s3vectors_urls.url_paths.setdefault("{0}/QueryVectors$", S3VectorsResponse.dispatch)
    backend = s3vectors_models.S3VectorsBackend
    backend.get_vectors = _get_vectors  # type: ignore[method-assign]
    backend.put_vectors = _changing(backend.put_vectors)  # type: ignore[method-assign]
    backend.delete_vectors = _changing(backend.delete_vectors)  # type: ignore[method-assign]
    setattr(S3VectorsResponse, _ADDED, True)


def moto_version() -> str:
    return str(moto.__version__)


def _changing(write: Any) -> Any:
    """A write that also drops the index's cached matrix (the next query rebuilds it)."""

    def changed(self: s3vectors_models.S3VectorsBackend, *args: Any, **kwargs: Any) -> Any:
        index = self.get_index(
            kwargs.get("vector_bucket_name", ""), kwargs.get("index_name", ""), kwargs.get("index_arn", "")
        )
        with _lock:
            result = write(self, *args, **kwargs)
            index.__dict__.pop(_CACHE, None)
        return result

    return changed


def _matrix(index: Any) -> tuple[list[Any], np.ndarray]:
    """The index's vectors as one float64 matrix, kept until the next write (queries are many, writes few)."""
    with _lock:
        cached = index.__dict__.get(_CACHE)
        if cached is None:
            vectors = list(index.vectors.values())
            rows = np.asarray([v.data["float32"] for v in vectors], dtype=np.float64).reshape(len(vectors), -1)
            cached = index.__dict__[_CACHE] = (vectors, rows)
        return cached


def _get_vectors(
    self: s3vectors_models.S3VectorsBackend, vector_bucket_name: str, index_name: str, index_arn: str, keys: list[str]
) -> list[Any]:
    index = self.get_index(vector_bucket_name, index_name=index_name, index_arn=index_arn)
    return [index.vectors[key] for key in dict.fromkeys(keys) if key in index.vectors]


def _query_vectors(self: S3VectorsResponse) -> ActionResult:
    index = self.s3vectors_backend.get_index(
        self._get_param("vectorBucketName"), self._get_param("indexName"), self._get_param("indexArn")
    )
    top_k = int(self._get_param("topK") or 0)
    if not 1 <= top_k <= MAX_TOP_K:
        raise ValidationError(f"topK must be between 1 and {MAX_TOP_K}")
    query = np.asarray((self._get_param("queryVector") or {}).get("float32", []), dtype=np.float64)
    if len(query) != index.dimension:
        raise ValidationError(f"the query vector has {len(query)} dimensions; the index has {index.dimension}")
    where = self._get_param("filter")
    token = self._get_param("nextToken")
    start = int(base64.b64decode(token).decode()) if token else 0
    every, matrix = _matrix(index)
    chosen = [n for n, v in enumerate(every) if matches(v.metadata or {}, where)]
    vectors = [every[n] for n in chosen]
    if vectors:
        keys = [v.key for v in vectors]
        rows = matrix[chosen] if len(chosen) < len(every) else matrix
        if index.distance_metric == "cosine":
            norms = np.linalg.norm(rows, axis=1) * float(np.linalg.norm(query))
            distances = 1.0 - (rows @ query) / np.where(norms > 0, norms, 1.0)
        else:
            distances = np.linalg.norm(rows - query, axis=1)
        # Nearest first, ties by key; only the first pages need sorting.
        wanted = min(len(vectors), start + top_k)
        nearest = np.argpartition(distances, wanted - 1)[:wanted] if wanted < len(vectors) else np.arange(len(vectors))
        cutoff = distances[nearest].max()
        tied = np.flatnonzero(distances <= cutoff)  # every vector as near as the last wanted one: ties by key
        order = sorted(tied.tolist(), key=lambda n: (distances[n], keys[n]))[:wanted]
    else:
        order, distances = [], np.empty(0)
    page = order[start : start + top_k]
    found = []
    for n in page:
        hit: dict[str, Any] = {"key": vectors[n].key}
        if self._get_bool_param("returnDistance", False):
            hit["distance"] = float(distances[n])
        if self._get_bool_param("returnMetadata", False):
            hit["metadata"] = vectors[n].metadata or {}
        found.append(hit)
    result: dict[str, Any] = {"vectors": found, "distanceMetric": index.distance_metric}
    if start + top_k < len(vectors):
        result["nextToken"] = base64.b64encode(str(start + top_k).encode()).decode()
    return ActionResult(result=result)
