"""AWS adapters: S3 for images, DynamoDB for photos, faces and collections, SQS between stages.

Every client honours AWS_ENDPOINT_URL, so the same code talks to AWS, LocalStack or moto server.
"""

from __future__ import annotations

import hashlib
import json
import random
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3
import numpy as np
from boto3.dynamodb.conditions import Key
from botocore.config import Config
from botocore.exceptions import ClientError

from candor.accountability.audit import AuditRecord
from candor.accountability.digests import SIGNING_ALGORITHM, SignedDigest
from candor.accountability.policy import CollectionPolicy
from candor.adapters.records import (
    change_from_dict,
    change_to_dict,
    collection_from_dict,
    collection_to_dict,
    face_from_dict,
    face_to_dict,
    from_item,
    photo_from_dict,
    photo_to_dict,
    stream_processor_from_dict,
    stream_processor_to_dict,
    to_item,
    user_from_dict,
    user_to_dict,
    video_job_from_dict,
    video_job_to_dict,
)
from candor.core.errors import (
    ConflictError,
    IdempotentParameterMismatchError,
    ImageTooLargeError,
    ResourceAlreadyExistsError,
    ResourceInUseError,
    ResourceNotFoundError,
    VideoTooLargeError,
)
from candor.core.faces import FaceRecord, PhotoRecord
from candor.core.settings import CHANGE_LOG_DAYS, CHANGE_LOG_ENTRY_FACES
from candor.live.processors import LiveSession, ProcessorStatus, StreamProcessor
from candor.ports import Collection, IndexChange, Page, StoredImage, User, VectorHit, wanted
from candor.video.jobs import JobResults, JobStatus, VideoJob, VideoRef

BY_COLLECTION_INDEX = "ByCollection"

# Throttling, 5xx and connection errors are retried here, with exponential backoff and jitter, before a
# record fails and SQS redelivers it: a blip costs a second, not a receive towards the dead-letter queue.
# "standard" (not "adaptive"): adaptive's client-side rate limiter would throttle a whole batch after one
# throttled call, and SQS's own redelivery already backs off a sustained outage.
RETRY_CONFIG = Config(retries={"mode": "standard", "max_attempts": 5}, connect_timeout=5, read_timeout=30)


def _client(service_name: str) -> Any:
    return boto3.client(service_name, config=RETRY_CONFIG)  # type: ignore[call-overload]


def _resource(service_name: str) -> Any:
    return boto3.resource(service_name, config=RETRY_CONFIG)  # type: ignore[call-overload]


class S3ImageStore:
    def __init__(self, client: Any | None = None) -> None:
        self._s3 = client or _client("s3")

    def get(self, bucket: str, key: str, version_id: str | None = None, max_bytes: int | None = None) -> StoredImage:
        params: dict[str, Any] = {"Bucket": bucket, "Key": key}
        if version_id:
            params["VersionId"] = version_id
        try:
            response = self._s3.get_object(**params)
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") in (
                "NoSuchKey",
                "404",
                "NoSuchBucket",
                "NoSuchVersion",
            ):
                raise ResourceNotFoundError(f"s3://{bucket}/{key} does not exist") from error
            raise
        body = response["Body"]
        size = int(response.get("ContentLength", 0))
        if max_bytes is not None and size > max_bytes:
            body.close()  # never read an oversized body into memory
            raise ImageTooLargeError(f"object is {size} bytes; the limit is {max_bytes}")
        modified = response.get("LastModified")
        return StoredImage(
            body.read(),
            dict(response.get("Metadata", {})),
            response.get("VersionId"),
            etag=str(response.get("ETag", "")).strip('"') or None,
            last_modified=modified.isoformat() if modified else None,
        )

    def add_tag(self, bucket: str, key: str, name: str, value: str) -> None:
        tags = self._s3.get_object_tagging(Bucket=bucket, Key=key).get("TagSet", [])
        if {"Key": name, "Value": value} in tags:
            return
        tags = [tag for tag in tags if tag["Key"] != name] + [{"Key": name, "Value": value}]
        self._s3.put_object_tagging(Bucket=bucket, Key=key, Tagging={"TagSet": tags})

    def delete(self, bucket: str, key: str) -> None:
        self._s3.delete_object(Bucket=bucket, Key=key)


class DynamoPhotoRepository:
    def __init__(self, table_name: str, resource: Any | None = None) -> None:
        self._table = (resource or _resource("dynamodb")).Table(table_name)

    def save(self, photo: PhotoRecord) -> None:
        self._table.put_item(Item=to_item(photo_to_dict(photo)))

    def get(self, photo_id: str) -> PhotoRecord | None:
        item = self._table.get_item(Key={"photo_id": photo_id}, ConsistentRead=True).get("Item")
        return photo_from_dict(item) if item else None

    def delete(self, photo_id: str) -> None:
        self._table.delete_item(Key={"photo_id": photo_id})


class DynamoFaceRepository:
    def __init__(self, table_name: str, resource: Any | None = None) -> None:
        self._table = (resource or _resource("dynamodb")).Table(table_name)

    def save_all(self, faces: Sequence[FaceRecord]) -> None:
        # Face ids are stable, so a retried batch overwrites the same items instead of adding copies.
        with self._table.batch_writer(overwrite_by_pkeys=["face_id"]) as batch:
            for face in faces:
                batch.put_item(Item=to_item(face_to_dict(face)))

    def list_collection(self, collection_id: str) -> Iterable[FaceRecord]:
        for item in self._query_pages(collection_id):
            yield face_from_dict(item)

    def list_collection_page(self, collection_id: str, limit: int, after: str | None = None) -> Page[FaceRecord]:
        start = {"collection_id": collection_id, "face_id": after} if after else None
        items = _query_limited(self._table, self._collection_query(collection_id), limit, start)
        records = [face_from_dict(item) for item in items]
        return _page(records, limit, lambda face: face.face_id)

    def delete_all(self, face_ids: Sequence[str]) -> None:
        with self._table.batch_writer(overwrite_by_pkeys=["face_id"]) as batch:
            for face_id in face_ids:
                batch.delete_item(Key={"face_id": face_id})

    def existing(self, face_ids: Sequence[str]) -> set[str]:
        # Consistent reads of the base table: the ByCollection index is eventually consistent and may still
        # list a face for a moment after DeleteFaces removed it.
        return {item["face_id"] for item in self._consistent_batch_get(face_ids, projection="face_id")}

    def get_many(self, face_ids: Sequence[str]) -> dict[str, FaceRecord]:
        records = (face_from_dict(item) for item in self._consistent_batch_get(face_ids))
        return {face.face_id: face for face in records}

    def _consistent_batch_get(self, face_ids: Sequence[str], projection: str | None = None) -> list[dict[str, Any]]:
        # The Table's client is the resource's: it takes and returns plain values, as the Table does.
        client, table = self._table.meta.client, self._table.name
        ids = list(dict.fromkeys(face_ids))
        found: list[dict[str, Any]] = []
        for start in range(0, len(ids), 100):  # BatchGetItem's limit per request
            keys: dict[str, Any] = {"Keys": [{"face_id": face_id} for face_id in ids[start : start + 100]]}
            keys["ConsistentRead"] = True
            if projection:
                keys["ProjectionExpression"] = projection
            request: dict[str, Any] = {table: keys}
            for attempt in range(6):
                response = client.batch_get_item(RequestItems=request)
                found.extend(response.get("Responses", {}).get(table, []))
                request = response.get("UnprocessedKeys") or {}
                if not request:
                    break
                time.sleep(0.05 * 2**attempt)  # keys left unread under throttling: again, with backoff
            else:
                # Never answer with a face that could not be checked.
                raise RuntimeError(f"{len(request[table]['Keys'])} faces of {table} still unread after retries")
        return found

    def set_user(self, face_ids: Sequence[str], user_id: str | None) -> None:
        for face_id in face_ids:
            params: dict[str, Any] = {
                "Key": {"face_id": face_id},
                # Never resurrect a face deleted meanwhile as a bare item holding only a user id.
                "ConditionExpression": "attribute_exists(face_id)",
            }
            if user_id is None:
                params["UpdateExpression"] = "REMOVE user_id"
            else:
                params["UpdateExpression"] = "SET user_id = :u"
                params["ExpressionAttributeValues"] = {":u": user_id}
            try:
                self._table.update_item(**params)
            except ClientError as error:
                if error.response.get("Error", {}).get("Code") != "ConditionalCheckFailedException":
                    raise

    @staticmethod
    def _collection_query(collection_id: str) -> dict[str, Any]:
        return {
            "IndexName": BY_COLLECTION_INDEX,
            "KeyConditionExpression": "collection_id = :c",
            "ExpressionAttributeValues": {":c": collection_id},
        }

    def _query_pages(self, collection_id: str) -> Iterator[dict[str, Any]]:
        params = self._collection_query(collection_id)
        while True:
            page = self._table.query(**params)
            yield from page.get("Items", [])
            if "LastEvaluatedKey" not in page:
                return
            params["ExclusiveStartKey"] = page["LastEvaluatedKey"]


class DynamoCollectionRepository:
    """Collections; changes to their faces go to the collection's change log (DynamoChangeLog), which only the
    functions that change or search faces are given."""

    def __init__(self, table_name: str, change_log: DynamoChangeLog | None = None, resource: Any | None = None) -> None:
        self._table = (resource or _resource("dynamodb")).Table(table_name)
        self._log = change_log

    def get(self, collection_id: str) -> Collection | None:
        item = self._table.get_item(Key={"collection_id": collection_id}, ConsistentRead=True).get("Item")
        return collection_from_dict(item) if item else None

    def create(self, collection: Collection) -> None:
        try:
            self._table.put_item(
                Item=to_item(collection_to_dict(collection)),
                ConditionExpression="attribute_not_exists(collection_id)",
            )
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException":
                raise ResourceAlreadyExistsError(f"collection {collection.collection_id!r} already exists") from error
            raise

    def delete(self, collection_id: str) -> None:
        self._table.delete_item(Key={"collection_id": collection_id})

    def list_ids(self) -> list[str]:
        ids: list[str] = []
        params: dict[str, Any] = {"ProjectionExpression": "collection_id"}
        while True:
            page = self._table.scan(**params)
            ids.extend(str(item["collection_id"]) for item in page.get("Items", []))
            if "LastEvaluatedKey" not in page:
                return sorted(ids)
            params["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    def mark_changed(self, collection_id: str, change: IndexChange) -> None:
        if self._log is None:
            raise RuntimeError("this function was given no change log: it may not change a collection's faces")
        for part in change.parts(CHANGE_LOG_ENTRY_FACES):
            seq = self._log.append(collection_id, part, floor=lambda: self._change_seq(collection_id))
            try:
                # Raised only after the entry is written, so a reader never sees a number the log lacks.
                self._table.update_item(
                    Key={"collection_id": collection_id},
                    UpdateExpression="SET change_seq = :s",
                    ConditionExpression="attribute_exists(collection_id) AND "
                    "(attribute_not_exists(change_seq) OR change_seq < :s)",
                    ExpressionAttributeValues={":s": seq},
                )
            except ClientError as error:
                # A later change got there first (its number covers this one), or the collection is gone.
                if error.response.get("Error", {}).get("Code") != "ConditionalCheckFailedException":
                    raise

    def _change_seq(self, collection_id: str) -> int:
        collection = self.get(collection_id)
        return collection.change_seq if collection else 0

    def changes(self, collection_id: str, after: int, upto: int) -> list[IndexChange]:
        if self._log is None:
            raise RuntimeError("this function was given no change log")
        return self._log.changes(collection_id, after, upto)

    def set_policy(self, collection_id: str, policy: CollectionPolicy) -> None:
        self._set(collection_id, "policy", to_item(policy.to_dict()))

    def set_model_version(self, collection_id: str, version: str) -> None:
        self._set(collection_id, "face_model_version", version)

    def set_index_engine(self, collection_id: str, engine: str, change_seq: int) -> bool:
        try:
            self._table.update_item(
                Key={"collection_id": collection_id},
                UpdateExpression="SET index_engine = :e",
                ConditionExpression="attribute_exists(collection_id) AND "
                "(change_seq = :s OR (attribute_not_exists(change_seq) AND :s = :zero))",
                ExpressionAttributeValues={":e": engine, ":s": change_seq, ":zero": 0},
            )
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException":
                if self.get(collection_id) is None:
                    raise ResourceNotFoundError(f"collection {collection_id!r} does not exist") from error
                return False
            raise
        return True

    def _set(self, collection_id: str, attribute: str, value: Any) -> None:
        """One attribute of an existing collection; ResourceNotFoundError when there is none."""
        try:
            self._table.update_item(
                Key={"collection_id": collection_id},
                UpdateExpression="SET #a = :v",
                ConditionExpression="attribute_exists(collection_id)",
                ExpressionAttributeNames={"#a": attribute},
                ExpressionAttributeValues={":v": value},
            )
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException":
                raise ResourceNotFoundError(f"collection {collection_id!r} does not exist") from error
            raise


class DynamoChangeLog:
    """Each collection's numbered changes: (collection_id, seq) items that DynamoDB's TTL expires."""

    def __init__(self, table_name: str, resource: Any | None = None) -> None:
        self._table = (resource or _resource("dynamodb")).Table(table_name)

    def append(self, collection_id: str, change: IndexChange, floor: Callable[[], int] = lambda: 0) -> int:
        """Writes `change` as the next entry and returns its number; concurrent writers race for a number with
        a new-key condition, and the loser takes the next one. Once the log's entries have expired, numbering
        goes on above `floor()`, the collection's own number: numbers never go back."""
        expires_at = int(time.time()) + CHANGE_LOG_DAYS * 86400
        for _ in range(50):
            latest = self._table.query(
                KeyConditionExpression="collection_id = :c",
                ExpressionAttributeValues={":c": collection_id},
                ScanIndexForward=False,
                Limit=1,
                ConsistentRead=True,
            ).get("Items", [])
            # An entry not yet expired is the newest there is: every later one expires later still. An expired
            # one may outlive newer ones (TTL deletes in no order), so then the collection's number decides.
            newest = int(latest[0]["seq"]) if latest else 0
            fresh = bool(latest) and int(latest[0].get("expires_at", 0)) > time.time()
            seq = (newest if fresh else max(newest, floor())) + 1
            try:
                self._table.put_item(
                    Item=to_item(change_to_dict(collection_id, replace(change, seq=seq), expires_at)),
                    ConditionExpression="attribute_not_exists(seq)",
                )
                return seq
            except ClientError as error:
                if error.response.get("Error", {}).get("Code") != "ConditionalCheckFailedException":
                    raise
        raise RuntimeError(f"no free change number for collection {collection_id!r} after 50 tries")

    def changes(self, collection_id: str, after: int, upto: int) -> list[IndexChange]:
        """The entries numbered after+1 to upto that the log still holds, in order."""
        if upto <= after:
            return []
        params: dict[str, Any] = {
            "KeyConditionExpression": "collection_id = :c AND seq BETWEEN :a AND :b",
            "ExpressionAttributeValues": {":c": collection_id, ":a": after + 1, ":b": upto},
            "ConsistentRead": True,
        }
        found: list[IndexChange] = []
        while True:
            page = self._table.query(**params)
            found.extend(change_from_dict(item) for item in page.get("Items", []))
            if "LastEvaluatedKey" not in page:
                return found
            params["ExclusiveStartKey"] = page["LastEvaluatedKey"]


class DynamoUserRepository:
    """Users in their own table, keyed by collection then user id: a collection's users are one Query."""

    def __init__(self, table_name: str, resource: Any | None = None) -> None:
        self._table = (resource or _resource("dynamodb")).Table(table_name)

    def get(self, collection_id: str, user_id: str) -> User | None:
        key = {"collection_id": collection_id, "user_id": user_id}
        item = self._table.get_item(Key=key, ConsistentRead=True).get("Item")
        return user_from_dict(item) if item else None

    def create(self, user: User) -> None:
        try:
            self._table.put_item(Item=to_item(user_to_dict(user)), ConditionExpression="attribute_not_exists(user_id)")
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException":
                raise ConflictError(f"user {user.user_id!r} already exists in {user.collection_id!r}") from error
            raise

    def delete(self, collection_id: str, user_id: str) -> None:
        self._table.delete_item(Key={"collection_id": collection_id, "user_id": user_id})

    def list_page(self, collection_id: str, limit: int, after: str | None = None) -> Page[User]:
        query = {"KeyConditionExpression": "collection_id = :c", "ExpressionAttributeValues": {":c": collection_id}}
        start = {"collection_id": collection_id, "user_id": after} if after else None
        users = [user_from_dict(item) for item in _query_limited(self._table, query, limit, start)]
        return _page(users, limit, lambda user: user.user_id)


def _query_limited(table: Any, query: dict[str, Any], limit: int, start: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Up to limit + 1 items (one more tells whether another page follows), across DynamoDB's 1 MB pages."""
    params = dict(query, Limit=limit + 1)
    if start:
        params["ExclusiveStartKey"] = start
    items: list[dict[str, Any]] = []
    while len(items) <= limit:
        page = table.query(**params)
        items.extend(page.get("Items", []))
        if "LastEvaluatedKey" not in page:
            break
        params["ExclusiveStartKey"] = page["LastEvaluatedKey"]
        params["Limit"] = limit + 1 - len(items)
    return items[: limit + 1]


def _page(items: list[Any], limit: int, key_of: Any) -> Page[Any]:
    if len(items) > limit:
        return Page(items[:limit], key_of(items[limit - 1]) if limit else None)
    return Page(items, None)


class S3IndexSnapshotStore:
    """Snapshots of a collection's vector index: the files under snapshots/<name>/<snapshot>/, and
    latest/<name>.json naming the current one, where a name is a collection id.
    The manifest is written last, so a reader sees either the old snapshot or
    the whole new one; the previous snapshot is kept for readers still fetching it."""

    def __init__(self, bucket: str, client: Any | None = None) -> None:
        self._s3 = client or _client("s3")
        self._bucket = bucket

    def fetch(self, collection_id: str, directory: Path, only: Sequence[str] = ()) -> bool:
        manifest = self._manifest(collection_id)
        if manifest is None:
            return False
        prefix = f"snapshots/{collection_id}/{manifest['snapshot_id']}/"
        for name in (name for name in manifest["files"] if wanted(name, only)):
            target = Path(directory) / name
            target.parent.mkdir(parents=True, exist_ok=True)
            self._s3.download_file(self._bucket, prefix + name, str(target))
        return True

    def publish(self, collection_id: str, directory: Path, keep_previous: bool = True) -> None:
        directory = Path(directory)
        snapshot_id = f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{uuid.uuid4().hex[:8]}"
        prefix = f"snapshots/{collection_id}/{snapshot_id}/"
        files = sorted(path.relative_to(directory).as_posix() for path in directory.rglob("*") if path.is_file())
        for name in files:
            self._s3.upload_file(str(directory / name), self._bucket, prefix + name)  # multipart when large
        previous = self._manifest(collection_id)
        body = json.dumps({"snapshot_id": snapshot_id, "files": files})
        self._s3.put_object(Bucket=self._bucket, Key=f"latest/{collection_id}.json", Body=body.encode())
        keep = {snapshot_id, previous["snapshot_id"] if previous and keep_previous else ""}
        self._delete_snapshots(collection_id, keep)

    def _manifest(self, collection_id: str) -> dict[str, Any] | None:
        try:
            response = self._s3.get_object(Bucket=self._bucket, Key=f"latest/{collection_id}.json")
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return None
            raise
        manifest: dict[str, Any] = json.loads(response["Body"].read())
        return manifest

    def delete(self, collection_id: str) -> None:
        # The manifests first: a search starting meanwhile finds no snapshot and builds from the table. Those
        # under latest/<collection id>/ are the shards' and directory's of the release that had shards.
        self._s3.delete_object(Bucket=self._bucket, Key=f"latest/{collection_id}.json")
        self._delete_keys(self._keys(f"latest/{collection_id}/"))
        self._delete_snapshots(collection_id, keep=set())

    def _delete_snapshots(self, collection_id: str, keep: set[str]) -> None:
        """Every snapshot of the collection but those in `keep` (the shard snapshots of the release that had
        shards included: they hold vectors too)."""
        prefix = f"snapshots/{collection_id}/"
        stale = [key for key in self._keys(prefix) if key[len(prefix) :].split("/", 1)[0] not in keep]
        self._delete_keys(stale)

    def _keys(self, prefix: str) -> list[str]:
        pages = self._s3.get_paginator("list_objects_v2").paginate(Bucket=self._bucket, Prefix=prefix)
        return [item["Key"] for page in pages for item in page.get("Contents", [])]

    def _delete_keys(self, keys: list[str]) -> None:
        for start in range(0, len(keys), 1000):
            objects = [{"Key": key} for key in keys[start : start + 1000]]
            self._s3.delete_objects(Bucket=self._bucket, Delete={"Objects": objects})


class S3VectorStore:
    """Amazon S3 Vectors: one vector index per collection in the stack's vector bucket (`bucket_arn`).

    Within S3 Vectors' limits (docs.aws.amazon.com/AmazonS3/latest/userguide/s3-vectors-limitations.html): at
    most 500 vectors per PutVectors or DeleteVectors, 100 keys per GetVectors, topK of 100 per QueryVectors
    (a larger one is paged with nextToken), 1,000 keys per ListVectors page. Writes are paced to an index's
    rate (2,500 vectors inserted or deleted per second, `vectors_per_second`) within this process; beyond it
    (several writers at once) S3 Vectors answers 429 TooManyRequestsException, retried here with exponential
    backoff and jitter, beyond the client's own retries."""

    max_top_k = 100
    PUT_BATCH = 500
    GET_BATCH = 100
    THROTTLED = frozenset(
        {"TooManyRequestsException", "ThrottlingException", "SlowDown", "ServiceUnavailableException"}
    )

    def __init__(
        self,
        bucket_arn: str,
        client: Any | None = None,
        max_attempts: int = 8,
        vectors_per_second: float = 2_500.0,
    ) -> None:
        self._client = client or _client("s3vectors")
        self._bucket_arn = bucket_arn
        self._max_attempts = max_attempts
        self._rate = vectors_per_second
        self._next_write: dict[str, float] = {}  # index -> when its next batch may go (time.monotonic)

    def _pace(self, name: str, count: int) -> None:
        now = time.monotonic()
        due = max(now, self._next_write.get(name, now))
        if due > now:
            time.sleep(due - now)
        self._next_write[name] = due + count / self._rate

    def _index_arn(self, name: str) -> str:
        return f"{self._bucket_arn}/index/{name}"

    def _call(self, request: Callable[[], Any]) -> Any:
        for attempt in range(self._max_attempts):
            try:
                return request()
            except ClientError as error:
                code = error.response.get("Error", {}).get("Code", "")
                status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
                if (code not in self.THROTTLED and status != 429) or attempt == self._max_attempts - 1:
                    raise
                time.sleep(min(10.0, 0.2 * 2**attempt) * (0.5 + random.random() / 2))
        raise AssertionError("unreachable")

    def create_index(self, name: str, dimension: int, non_filterable: Sequence[str] = ()) -> None:
        if self.has_index(name):
            return
        params: dict[str, Any] = {
            "vectorBucketArn": self._bucket_arn,
            "indexName": name,
            "dataType": "float32",
            "dimension": dimension,
            "distanceMetric": "cosine",
        }
        if non_filterable:
            params["metadataConfiguration"] = {"nonFilterableMetadataKeys": list(non_filterable)}
        try:
            self._call(lambda: self._client.create_index(**params))
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") != "ConflictException":
                raise

    def delete_index(self, name: str) -> None:
        try:
            self._call(lambda: self._client.delete_index(indexArn=self._index_arn(name)))
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") != "NotFoundException":
                raise

    def has_index(self, name: str) -> bool:
        try:
            self._client.get_index(indexArn=self._index_arn(name))
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") == "NotFoundException":
                return False
            raise
        return True

    def put(self, name: str, keys: Sequence[str], vectors: Any, metadata: Sequence[dict[str, Any]]) -> None:
        rows = [
            {"key": key, "data": {"float32": [float(x) for x in vector]}, "metadata": meta}
            for key, vector, meta in zip(keys, vectors, metadata, strict=True)
        ]
        for start in range(0, len(rows), self.PUT_BATCH):
            batch = rows[start : start + self.PUT_BATCH]
            self._pace(name, len(batch))
            self._call(lambda: self._client.put_vectors(indexArn=self._index_arn(name), vectors=batch))  # noqa: B023 (called at once)

    def delete(self, name: str, keys: Sequence[str]) -> None:
        for start in range(0, len(keys), self.PUT_BATCH):
            batch = list(keys[start : start + self.PUT_BATCH])
            self._pace(name, len(batch))
            self._call(lambda: self._client.delete_vectors(indexArn=self._index_arn(name), keys=batch))  # noqa: B023

    def get(self, name: str, keys: Sequence[str]) -> dict[str, np.ndarray]:
        found: dict[str, np.ndarray] = {}
        for start in range(0, len(keys), self.GET_BATCH):
            batch = list(keys[start : start + self.GET_BATCH])
            answer = self._call(
                lambda: self._client.get_vectors(indexArn=self._index_arn(name), keys=batch, returnData=True)  # noqa: B023
            )
            for vector in answer.get("vectors", []):
                found[vector["key"]] = np.asarray(vector["data"]["float32"], dtype=np.float32)
        return found

    def keys(self, name: str) -> Iterator[str]:
        params: dict[str, Any] = {"indexArn": self._index_arn(name), "maxResults": 1000}
        while True:
            page = self._call(lambda: self._client.list_vectors(**params))
            yield from (vector["key"] for vector in page.get("vectors", []))
            if not page.get("nextToken"):
                return
            params["nextToken"] = page["nextToken"]

    def query(self, name: str, vector: Any, top_k: int, where: dict[str, Any] | None = None) -> list[VectorHit]:
        params: dict[str, Any] = {
            "indexArn": self._index_arn(name),
            "queryVector": {"float32": [float(x) for x in vector]},
            "returnDistance": True,
            "returnMetadata": True,
        }
        if where:
            params["filter"] = where
        hits: list[VectorHit] = []
        while len(hits) < top_k:
            params["topK"] = min(self.max_top_k, top_k - len(hits))
            page = self._call(lambda: self._client.query_vectors(**params))
            hits.extend(
                VectorHit(str(found["key"]), float(found["distance"]), dict(found.get("metadata") or {}))
                for found in page.get("vectors", [])
            )
            if not page.get("nextToken") or not page.get("vectors"):
                break
            params["nextToken"] = page["nextToken"]
        return hits[:top_k]


class SqsPublisher:
    def __init__(self, queue_url: str, client: Any | None = None) -> None:
        self._sqs = client or _client("sqs")
        self._queue_url = queue_url

    def publish(self, body: dict[str, Any]) -> None:
        self._sqs.send_message(QueueUrl=self._queue_url, MessageBody=json.dumps(body))

    def retry_in(self, receipt_handle: str, seconds: int) -> None:
        """A received message visible again in `seconds` (SQS's limit is 12 hours)."""
        self._sqs.change_message_visibility(
            QueueUrl=self._queue_url, ReceiptHandle=receipt_handle, VisibilityTimeout=min(max(seconds, 0), 43_200)
        )


class S3ModelSource:
    """Model files in the model bucket (template parameter ModelBucket), under a prefix."""

    def __init__(self, bucket: str, prefix: str = "", client: Any | None = None) -> None:
        self._s3 = client or _client("s3")
        self._bucket = bucket
        self._prefix = prefix

    def fetch(self, name: str, destination: Path) -> None:
        # download_file splits a large object into parallel ranged GETs.
        self._s3.download_file(self._bucket, f"{self._prefix}{name}", str(destination))


def model_source(bucket: str, prefix: str) -> S3ModelSource | None:
    """The model bucket when one is configured (on AWS); None locally, where MODEL_DIR has every file."""
    return S3ModelSource(bucket, prefix) if bucket else None


class DynamoAuditStore:
    """The audit chains in one table: partition key `chain`, sort key `seq`. Entries are only ever put with a
    condition that the key is free, so a writer can neither overwrite an entry nor lose a race silently."""

    def __init__(self, table_name: str, resource: Any | None = None) -> None:
        self._table = (resource or _resource("dynamodb")).Table(table_name)

    def head(self, chain: str) -> AuditRecord | None:
        page = self._table.query(
            KeyConditionExpression="#c = :c",
            ExpressionAttributeNames={"#c": "chain"},
            ExpressionAttributeValues={":c": chain},
            ScanIndexForward=False,
            Limit=1,
            ConsistentRead=True,
        )
        items = page.get("Items", [])
        return _audit_record(items[0]) if items else None

    def put_new(self, record: AuditRecord) -> bool:
        try:
            self._table.put_item(
                Item={
                    "chain": record.chain,
                    "seq": record.seq,
                    "body": record.body,
                    "prev_hash": record.prev_hash,
                    "hash": record.hash,
                },
                ConditionExpression="attribute_not_exists(#s)",
                ExpressionAttributeNames={"#s": "seq"},
            )
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException":
                return False
            raise
        return True

    def entries(self, chain: str) -> Iterator[AuditRecord]:
        params: dict[str, Any] = {
            "KeyConditionExpression": "#c = :c",
            "ExpressionAttributeNames": {"#c": "chain"},
            "ExpressionAttributeValues": {":c": chain},
            "ConsistentRead": True,
        }
        while True:
            page = self._table.query(**params)
            for item in page.get("Items", []):
                yield _audit_record(item)
            if "LastEvaluatedKey" not in page:
                return
            params["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    def chains(self) -> list[str]:
        names: set[str] = set()
        params: dict[str, Any] = {"ProjectionExpression": "#c", "ExpressionAttributeNames": {"#c": "chain"}}
        while True:
            page = self._table.scan(**params)
            names.update(str(item["chain"]) for item in page.get("Items", []))
            if "LastEvaluatedKey" not in page:
                return sorted(names)
            params["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def _audit_record(item: dict[str, Any]) -> AuditRecord:
    return AuditRecord(
        str(item["chain"]), int(item["seq"]), str(item["body"]), str(item["prev_hash"]), str(item["hash"])
    )


class DynamoQuotaCounter:
    """Search quotas: one counter item per key and window, incremented atomically below its limit and
    removed by DynamoDB's TTL once the window is over."""

    def __init__(self, table_name: str, resource: Any | None = None) -> None:
        self._table = (resource or _resource("dynamodb")).Table(table_name)

    def consume(self, key: str, limit: int, expires_at: int, amount: int = 1) -> bool:
        if amount > limit:
            return False
        try:
            self._table.update_item(
                Key={"quota_key": key},
                UpdateExpression="ADD used :amount SET expires_at = :e",
                # used + amount <= limit, as DynamoDB conditions can say it: used <= limit - amount.
                ConditionExpression="attribute_not_exists(used) OR used <= :room",
                ExpressionAttributeValues={":amount": amount, ":e": expires_at, ":room": limit - amount},
            )
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException":
                return False
            raise
        return True

    def release(self, key: str, amount: int) -> None:
        self._table.update_item(
            Key={"quota_key": key},
            UpdateExpression="ADD used :minus",
            ConditionExpression="attribute_exists(used)",
            ExpressionAttributeValues={":minus": -amount},
        )


class KmsDigestSigner:
    """Signs audit digests with an asymmetric KMS key (ECC_NIST_P256): the private key never leaves KMS."""

    def __init__(self, key_id: str, client: Any | None = None) -> None:
        self._key_id = key_id
        self._kms = client or _client("kms")

    @property
    def key_id(self) -> str:
        return self._key_id

    def sign(self, message: bytes) -> bytes:
        response = self._kms.sign(
            KeyId=self._key_id, Message=message, MessageType="RAW", SigningAlgorithm=SIGNING_ALGORITHM
        )
        return bytes(response["Signature"])

    def public_key(self) -> bytes:
        """The key's public half (DER SubjectPublicKeyInfo), for checking signatures anywhere without KMS."""
        return bytes(self._kms.get_public_key(KeyId=self._key_id)["PublicKey"])


class S3DigestStore:
    """Audit digests as objects `audit-digests/<number>.json` in a bucket under Object Lock, written only if
    the key is free (If-None-Match). `latest.json` names the newest number; it is a hint only: the listing
    after it is checked too, and the verifier reads every digest and every version."""

    PREFIX = "audit-digests/"
    LATEST = "audit-digests/latest.json"

    def __init__(self, bucket: str, client: Any | None = None) -> None:
        self._bucket = bucket
        self._s3 = client or _client("s3")

    @classmethod
    def key(cls, number: int) -> str:
        return f"{cls.PREFIX}{number:010d}.json"

    def latest(self) -> SignedDigest | None:
        hint = 0
        try:
            body = self._s3.get_object(Bucket=self._bucket, Key=self.LATEST)["Body"].read()
            hint = int(json.loads(body)["number"])
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") not in ("NoSuchKey", "404"):
                raise
        params: dict[str, Any] = {"Bucket": self._bucket, "Prefix": self.PREFIX}
        if hint:
            params["StartAfter"] = self.key(hint - 1)
        newest = None
        while True:
            page = self._s3.list_objects_v2(**params)
            numbered = [o["Key"] for o in page.get("Contents", []) if o["Key"] != self.LATEST]
            newest = numbered[-1] if numbered else newest
            if not page.get("IsTruncated"):
                break
            params["ContinuationToken"] = page["NextContinuationToken"]
        if newest is None:
            return None
        return SignedDigest.from_json(self._s3.get_object(Bucket=self._bucket, Key=newest)["Body"].read())

    def put_new(self, digest: SignedDigest) -> bool:
        try:
            self._s3.put_object(
                Bucket=self._bucket,
                Key=self.key(digest.number),
                Body=digest.to_json(),
                ContentType="application/json",
                IfNoneMatch="*",
            )
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") in ("PreconditionFailed", "ConditionalRequestConflict"):
                return False
            raise
        latest = json.dumps({"number": digest.number}).encode()
        self._s3.put_object(Bucket=self._bucket, Key=self.LATEST, Body=latest, ContentType="application/json")
        return True

    def stored(self) -> list[tuple[str, bytes]]:
        """Every version of every digest object, as (key and version, content): an overwritten digest shows
        as two versions of one number."""
        stored = []
        params: dict[str, Any] = {"Bucket": self._bucket, "Prefix": self.PREFIX}
        while True:
            page = self._s3.list_object_versions(**params)
            for version in page.get("Versions", []):
                if version["Key"] == self.LATEST:
                    continue
                got = self._s3.get_object(Bucket=self._bucket, Key=version["Key"], VersionId=version["VersionId"])
                stored.append((f"{version['Key']} version {version['VersionId']}", got["Body"].read()))
            if not page.get("IsTruncated"):
                return stored
            params["KeyMarker"] = page["NextKeyMarker"]
            params["VersionIdMarker"] = page["NextVersionIdMarker"]

    def deleted(self) -> list[str]:
        """Digest keys whose newest version is a delete marker (the locked versions remain below it)."""
        markers = []
        params: dict[str, Any] = {"Bucket": self._bucket, "Prefix": self.PREFIX}
        while True:
            page = self._s3.list_object_versions(**params)
            markers += [m["Key"] for m in page.get("DeleteMarkers", []) if m.get("IsLatest")]
            if not page.get("IsTruncated"):
                return markers
            params["KeyMarker"] = page["NextKeyMarker"]
            params["VersionIdMarker"] = page["NextVersionIdMarker"]


# --------------------------------------------------------------------------------------------- video jobs


class DynamoVideoJobRepository:
    """VideoJobsTable: a job at pk job#<JobId>, sk "job"; a ClientRequestToken at pk token#<API>#<token>; and
    per stored face a job matched, pk face#<FaceId>, sk the JobId (erasure finds the jobs by it)."""

    def __init__(self, table_name: str, resource: Any | None = None) -> None:
        self._table = (resource or _resource("dynamodb")).Table(table_name)

    def create(self, job: VideoJob, token: str | None = None, fingerprint: str | None = None) -> tuple[VideoJob, bool]:
        if token is not None:
            token_key = {"pk": f"token#{job.kind.api}#{token}", "sk": "token"}
            try:
                self._table.put_item(
                    Item={**token_key, "job_id": job.job_id, "fingerprint": fingerprint or "", "expires_at": _days(30)},
                    ConditionExpression="attribute_not_exists(pk)",
                )
            except ClientError as error:
                if error.response["Error"]["Code"] != "ConditionalCheckFailedException":
                    raise
                earlier = self._table.get_item(Key=token_key, ConsistentRead=True)["Item"]
                if earlier.get("fingerprint") != (fingerprint or ""):
                    raise IdempotentParameterMismatchError(
                        f"ClientRequestToken {token!r} started job {earlier['job_id']} with other parameters"
                    ) from error
                job = replace(job, job_id=str(earlier["job_id"]))
        created = True
        try:
            self._table.put_item(
                Item=to_item({"pk": f"job#{job.job_id}", "sk": "job", **video_job_to_dict(job)}),
                ConditionExpression="attribute_not_exists(pk)",
            )
        except ClientError as error:
            if error.response["Error"]["Code"] != "ConditionalCheckFailedException":
                raise
            created = False
        recorded = self.get(job.job_id)
        assert recorded is not None
        return recorded, created

    def get(self, job_id: str) -> VideoJob | None:
        item = self._table.get_item(Key={"pk": f"job#{job_id}", "sk": "job"}, ConsistentRead=True).get("Item")
        return video_job_from_dict(from_item(item)) if item else None

    def set_plan(self, job_id: str, metadata: dict[str, Any], segments: int) -> None:
        self._table.update_item(
            Key={"pk": f"job#{job_id}", "sk": "job"},
            UpdateExpression="SET #metadata = :metadata, #segments = :segments",
            ExpressionAttributeNames={"#metadata": "metadata", "#segments": "segments"},
            ExpressionAttributeValues={":metadata": to_item(metadata), ":segments": segments},
        )

    def segment_done(self, job_id: str, segment: int) -> VideoJob:
        # ADD to a number set: atomic and idempotent, so the worker that completes the set is known.
        response = self._table.update_item(
            Key={"pk": f"job#{job_id}", "sk": "job"},
            UpdateExpression="ADD segments_done :segment",
            ExpressionAttributeValues={":segment": {segment}},
            ReturnValues="ALL_NEW",
        )
        return video_job_from_dict(from_item(response["Attributes"]))

    def finish(
        self,
        job_id: str,
        status: JobStatus,
        message: str | None,
        expires_at: int,
        false_match_risk: float | None = None,
    ) -> bool:
        values: dict[str, Any] = {
            ":status": status.value,
            ":running": JobStatus.IN_PROGRESS.value,
            ":completed_at": datetime.now(UTC).isoformat(),
            ":expires_at": expires_at,
            ":message": message or "",
        }
        update = (
            "SET #status = :status, completed_at = :completed_at, expires_at = :expires_at, status_message = :message"
        )
        if false_match_risk is not None:
            update += ", false_match_risk = :risk"
            values[":risk"] = to_item(float(false_match_risk))
        try:
            self._table.update_item(
                Key={"pk": f"job#{job_id}", "sk": "job"},
                UpdateExpression=update,
                ConditionExpression="#status = :running",
                ExpressionAttributeNames={"#status": "status"},
                ExpressionAttributeValues=values,
            )
        except ClientError as error:
            if error.response["Error"]["Code"] == "ConditionalCheckFailedException":
                return False
            raise
        return True

    def add_matches(self, job_id: str, face_ids: Sequence[str], expires_at: int) -> None:
        with self._table.batch_writer() as batch:
            for face_id in face_ids:
                batch.put_item(Item={"pk": f"face#{face_id}", "sk": job_id, "expires_at": expires_at})

    def jobs_matching(self, face_id: str) -> list[str]:
        items: list[str] = []
        query: dict[str, Any] = {"KeyConditionExpression": Key("pk").eq(f"face#{face_id}")}
        while True:
            response = self._table.query(**query)
            items.extend(str(item["sk"]) for item in response.get("Items", []))
            if "LastEvaluatedKey" not in response:
                return items
            query["ExclusiveStartKey"] = response["LastEvaluatedKey"]

    def remove_matches(self, job_id: str, face_ids: Sequence[str]) -> None:
        for face_id in face_ids:
            self._table.delete_item(Key={"pk": f"face#{face_id}", "sk": job_id})


class S3VideoStore:
    """Videos in the upload bucket; each job's results (and its segments' until it ends) in the results bucket."""

    def __init__(self, results_bucket: str, client: Any | None = None, cache_dir: Path | None = None) -> None:
        self._s3 = client or _client("s3")
        self._bucket = results_bucket
        self._cache_dir = cache_dir or Path(tempfile.gettempdir()) / "candor-videos"

    def _head(self, video: VideoRef) -> dict[str, Any]:
        params: dict[str, Any] = {"Bucket": video.bucket, "Key": video.key}
        if video.version_id:
            params["VersionId"] = video.version_id
        try:
            return dict(self._s3.head_object(**params))
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NoSuchBucket", "NoSuchVersion"):
                raise ResourceNotFoundError(f"s3://{video.bucket}/{video.key} does not exist") from error
            raise

    def size(self, video: VideoRef) -> int:
        return int(self._head(video).get("ContentLength", 0))

    def metadata(self, video: VideoRef) -> dict[str, str]:
        return {str(k).lower(): str(v) for k, v in (self._head(video).get("Metadata") or {}).items()}

    def fetch(self, video: VideoRef, max_bytes: int) -> Path:
        head = self._head(video)
        size = int(head.get("ContentLength", 0))
        if size > max_bytes:
            raise VideoTooLargeError(f"the video is {size:,} bytes; the limit is {max_bytes:,} bytes")
        # One copy per object version (the ETag changes with the content): the next segments read it from /tmp.
        name = hashlib.sha256(f"{video.bucket}|{video.key}|{video.version_id}|{head.get('ETag')}".encode()).hexdigest()
        path = self._cache_dir / name
        if path.is_file() and path.stat().st_size == size:
            return path
        self._cache_dir.mkdir(parents=True, exist_ok=True)
        for old in self._cache_dir.iterdir():  # one video at a time: /tmp is the instance's only disk
            old.unlink(missing_ok=True)
        partial = path.with_suffix(".part")
        extra = {"VersionId": video.version_id} if video.version_id else None
        self._s3.download_file(video.bucket, video.key, str(partial), ExtraArgs=extra)
        partial.rename(path)
        return path

    def put_segment(self, job_id: str, segment: int, results: JobResults) -> None:
        self._put(f"jobs/{job_id}/segments/{segment:06d}.json", results.to_dict())

    def get_segment(self, job_id: str, segment: int) -> JobResults:
        data = self._get(f"jobs/{job_id}/segments/{segment:06d}.json")
        if data is None:
            raise ResourceNotFoundError(f"segment {segment} of job {job_id} has no results")
        return JobResults.from_dict(data)

    def delete_segments(self, job_id: str, segments: int) -> None:
        # The segments' results hold the faces' embeddings: gone once the job's results are stored.
        keys = [{"Key": f"jobs/{job_id}/segments/{n:06d}.json"} for n in range(segments)]
        for start in range(0, len(keys), 1000):
            self._s3.delete_objects(Bucket=self._bucket, Delete={"Objects": keys[start : start + 1000], "Quiet": True})

    def put_results(self, job_id: str, results: JobResults) -> None:
        self._put(f"jobs/{job_id}/results.json", results.to_dict())

    def get_results(self, job_id: str) -> JobResults | None:
        data = self._get(f"jobs/{job_id}/results.json")
        return JobResults.from_dict(data) if data is not None else None

    def _put(self, key: str, data: dict[str, Any]) -> None:
        body = json.dumps(data, separators=(",", ":")).encode()
        self._s3.put_object(Bucket=self._bucket, Key=key, Body=body, ContentType="application/json")

    def _get(self, key: str) -> dict[str, Any] | None:
        try:
            response = self._s3.get_object(Bucket=self._bucket, Key=key)
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return None
            raise
        data: dict[str, Any] = json.loads(response["Body"].read())
        return data


class SnsJobNotifier:
    """Publishes a job's completion message to the caller's topic as the caller's role, as Rekognition does."""

    def __init__(self, sts: Any | None = None) -> None:
        self._sts = sts or _client("sts")

    def notify(self, topic_arn: str, role_arn: str, message: dict[str, Any]) -> None:
        credentials = self._sts.assume_role(RoleArn=role_arn, RoleSessionName="candor-video-job")["Credentials"]
        sns = _client_as(credentials, "sns", topic_arn.split(":")[3] or None)
        sns.publish(TopicArn=topic_arn, Message=json.dumps(message))


class DynamoStreamProcessorRepository:
    """StreamProcessorsTable: every processor under pk "processors" (sk its name, so ListStreamProcessors pages
    by name), the claim on its input at pk input#<video stream name>, and its run's state at pk
    session#<name>. Records are kept as JSON strings: the tracker's vectors stay floats, not Decimals."""

    def __init__(self, table_name: str, resource: Any | None = None) -> None:
        self._table = (resource or _resource("dynamodb")).Table(table_name)
        self._client = self._table.meta.client

    def create(self, processor: StreamProcessor) -> None:
        name = self._table.name
        try:
            self._client.transact_write_items(
                TransactItems=[
                    {"Put": {"TableName": name, "Item": self._processor_item(processor),
                             "ConditionExpression": "attribute_not_exists(pk)"}},
                    {"Put": {"TableName": name,
                             "Item": {"pk": f"input#{processor.input_stream_name}", "sk": "input",
                                      "name": processor.name},
                             "ConditionExpression": "attribute_not_exists(pk)"}},
                ]
            )  # fmt: skip
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") != "TransactionCanceledException":
                raise
            reasons = [reason.get("Code") for reason in error.response.get("CancellationReasons", [])]
            if reasons[:1] == ["ConditionalCheckFailed"] or self.get(processor.name) is not None:
                raise ResourceInUseError(f"a stream processor named {processor.name!r} exists already") from error
            raise ResourceInUseError(
                f"the video stream {processor.input_stream_name!r} is the input of another stream processor"
            ) from error

    def get(self, name: str) -> StreamProcessor | None:
        item = self._table.get_item(Key={"pk": "processors", "sk": name}, ConsistentRead=True).get("Item")
        return stream_processor_from_dict(json.loads(item["record"])) if item else None

    def reading(self, stream_name: str) -> StreamProcessor | None:
        claim = self._table.get_item(Key={"pk": f"input#{stream_name}", "sk": "input"}, ConsistentRead=True)
        return self.get(str(claim["Item"]["name"])) if "Item" in claim else None

    def list(self, after: str | None, limit: int) -> tuple[list[StreamProcessor], str | None]:
        query: dict[str, Any] = {"KeyConditionExpression": Key("pk").eq("processors"), "Limit": limit}
        if after:
            query["ExclusiveStartKey"] = {"pk": "processors", "sk": after}
        response = self._table.query(**query)
        processors = [stream_processor_from_dict(json.loads(item["record"])) for item in response["Items"]]
        more = "LastEvaluatedKey" in response and processors
        return processors, processors[-1].name if more else None

    def put(self, processor: StreamProcessor, expected: Sequence[ProcessorStatus]) -> None:
        values = {f":s{n}": status.value for n, status in enumerate(expected)}
        try:
            self._table.put_item(
                Item=self._processor_item(processor),
                ConditionExpression=f"#status IN ({', '.join(values)})",
                ExpressionAttributeNames={"#status": "status"},
                ExpressionAttributeValues=values,
            )
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") != "ConditionalCheckFailedException":
                raise
            now = self.get(processor.name)
            state = now.status.value if now else "deleted"
            raise ResourceInUseError(f"stream processor {processor.name!r} is {state}") from error

    def delete(self, processor: StreamProcessor) -> None:
        self._table.delete_item(Key={"pk": "processors", "sk": processor.name})
        self._table.delete_item(Key={"pk": f"input#{processor.input_stream_name}", "sk": "input"})

    def get_session(self, name: str) -> LiveSession | None:
        item = self._table.get_item(Key={"pk": f"session#{name}", "sk": "session"}, ConsistentRead=True).get("Item")
        return LiveSession.from_dict(json.loads(item["state"])) if item else None

    def put_session(self, name: str, session: LiveSession) -> None:
        self._table.put_item(Item={"pk": f"session#{name}", "sk": "session", "state": json.dumps(session.to_dict())})

    def delete_session(self, name: str) -> None:
        self._table.delete_item(Key={"pk": f"session#{name}", "sk": "session"})

    @staticmethod
    def _processor_item(processor: StreamProcessor) -> dict[str, Any]:
        record = json.dumps(stream_processor_to_dict(processor))
        return {"pk": "processors", "sk": processor.name, "status": processor.status.value, "record": record}


class KinesisRecordWriter:
    """Puts a processor's output records on its Kinesis data stream as the processor's role (RoleArn), in
    order: one PutRecord after another, each ordered after the last (PutRecords does not keep order)."""

    def __init__(self, sts: Any | None = None) -> None:
        self._sts = sts or _client("sts")
        self._clients: dict[str, tuple[Any, float]] = {}

    def put_records(self, stream_arn: str, role_arn: str, records: Sequence[tuple[str, dict[str, Any]]]) -> None:
        kinesis = self._kinesis(role_arn, stream_arn.split(":")[3] or None)
        last: str | None = None
        for partition_key, record in records:
            request: dict[str, Any] = {"StreamARN": stream_arn, "PartitionKey": partition_key,
                                       "Data": json.dumps(record).encode()}  # fmt: skip
            if last is not None:
                request["SequenceNumberForOrdering"] = last
            last = kinesis.put_record(**request)["SequenceNumber"]

    def _kinesis(self, role_arn: str, region: str | None) -> Any:
        cached = self._clients.get(role_arn)
        if cached is not None and cached[1] > time.time() + 300:
            return cached[0]
        credentials = self._sts.assume_role(RoleArn=role_arn, RoleSessionName="candor-stream-processor")["Credentials"]
        client = _client_as(credentials, "kinesis", region)
        expiration = credentials.get("Expiration")
        expires = expiration.timestamp() if isinstance(expiration, datetime) else time.time() + 900
        self._clients[role_arn] = (client, expires)
        return client


def _client_as(credentials: dict[str, Any], service_name: str, region: str | None) -> Any:
    """A client signing with an assumed role's credentials (the caller's RoleArn)."""
    return boto3.client(  # type: ignore[call-overload]
        service_name,
        region_name=region,
        aws_access_key_id=credentials["AccessKeyId"],
        aws_secret_access_key=credentials["SecretAccessKey"],
        aws_session_token=credentials["SessionToken"],
        config=RETRY_CONFIG,
    )


def _days(days: int) -> int:
    return int(time.time()) + days * 86_400
