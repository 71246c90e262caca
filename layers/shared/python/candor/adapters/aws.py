"""AWS adapters: S3 for images, DynamoDB for photos, faces and collections, SQS between stages.

Every client honours AWS_ENDPOINT_URL, so the same code talks to AWS, LocalStack or moto server.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import boto3
from botocore.exceptions import ClientError

from candor.adapters.records import (
    collection_from_dict,
    collection_to_dict,
    face_from_dict,
    face_to_dict,
    photo_from_dict,
    photo_to_dict,
    to_item,
)
from candor.errors import ImageTooLargeError, ResourceAlreadyExistsError, ResourceNotFoundError
from candor.faces import FaceRecord, PhotoRecord
from candor.ports import Collection, StoredImage

BY_COLLECTION_INDEX = "ByCollection"


class S3ImageStore:
    def __init__(self, client: Any | None = None) -> None:
        self._s3 = client or boto3.client("s3")

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
        return StoredImage(body.read(), dict(response.get("Metadata", {})), response.get("VersionId"))


class DynamoPhotoRepository:
    def __init__(self, table_name: str, resource: Any | None = None) -> None:
        self._table = (resource or boto3.resource("dynamodb")).Table(table_name)

    def save(self, photo: PhotoRecord) -> None:
        self._table.put_item(Item=to_item(photo_to_dict(photo)))

    def get(self, photo_id: str) -> PhotoRecord | None:
        item = self._table.get_item(Key={"photo_id": photo_id}, ConsistentRead=True).get("Item")
        return photo_from_dict(item) if item else None


class DynamoFaceRepository:
    def __init__(self, table_name: str, resource: Any | None = None) -> None:
        self._table = (resource or boto3.resource("dynamodb")).Table(table_name)

    def save_all(self, faces: Sequence[FaceRecord]) -> None:
        # Face ids are stable, so a retried batch overwrites the same items instead of adding copies.
        with self._table.batch_writer(overwrite_by_pkeys=["face_id"]) as batch:
            for face in faces:
                batch.put_item(Item=to_item(face_to_dict(face)))

    def list_collection(self, collection_id: str) -> Iterable[FaceRecord]:
        for item in self._query_pages(collection_id):
            yield face_from_dict(item)

    def _query_pages(self, collection_id: str) -> Iterator[dict[str, Any]]:
        params: dict[str, Any] = {
            "IndexName": BY_COLLECTION_INDEX,
            "KeyConditionExpression": "collection_id = :c",
            "ExpressionAttributeValues": {":c": collection_id},
        }
        while True:
            page = self._table.query(**params)
            yield from page.get("Items", [])
            if "LastEvaluatedKey" not in page:
                return
            params["ExclusiveStartKey"] = page["LastEvaluatedKey"]


class DynamoCollectionRepository:
    def __init__(self, table_name: str, resource: Any | None = None) -> None:
        self._table = (resource or boto3.resource("dynamodb")).Table(table_name)

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

    def mark_changed(self, collection_id: str) -> None:
        self._table.update_item(
            Key={"collection_id": collection_id},
            UpdateExpression="SET index_version = :v",
            ConditionExpression="attribute_exists(collection_id)",
            ExpressionAttributeValues={":v": uuid.uuid4().hex},
        )


class SqsPublisher:
    def __init__(self, queue_url: str, client: Any | None = None) -> None:
        self._sqs = client or boto3.client("sqs")
        self._queue_url = queue_url

    def publish(self, body: dict[str, Any]) -> None:
        self._sqs.send_message(QueueUrl=self._queue_url, MessageBody=json.dumps(body))
