"""Reading S3 event notifications as they arrive in an SQS message body.

Keys in notifications are URL-encoded (real S3 writes spaces as '+', moto encodes '/' too), so they are
always decoded with unquote_plus. An `s3:TestEvent` (sent when a notification is configured) names no photo.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import unquote_plus

from candor.core.errors import MalformedEventError
from candor.pipeline import PhotoRef


def photo_refs_from_notification(body: str) -> list[PhotoRef]:
    try:
        notification: Any = json.loads(body)
    except json.JSONDecodeError as error:
        raise MalformedEventError(f"message body is not JSON: {error}") from error
    if not isinstance(notification, dict):
        raise MalformedEventError("message body is not an S3 event notification")
    if notification.get("Event") == "s3:TestEvent":
        return []
    records = notification.get("Records")
    if not isinstance(records, list):
        raise MalformedEventError("S3 event notification has no Records list")
    refs = []
    for record in records:
        event_name = str(record.get("eventName", "")) if isinstance(record, dict) else ""
        if not event_name.startswith("ObjectCreated:"):
            raise MalformedEventError(f"unsupported event {event_name or '(none)'}: only ObjectCreated is processed")
        try:
            s3 = record["s3"]
            bucket, key = s3["bucket"]["name"], unquote_plus(s3["object"]["key"])
        except (KeyError, TypeError) as error:
            raise MalformedEventError(f"S3 record lacks the bucket name or object key ({error})") from error
        refs.append(PhotoRef(bucket, key, s3["object"].get("versionId")))
    return refs
