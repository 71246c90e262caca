"""How long what enrols nobody is kept. A photo that enrols nobody (or whose enrolment was refused), its
detected faces and their embeddings carry `expires_at`, which DynamoDB's TTL acts on, and the photo object
gets the tag the upload bucket's lifecycle rule expires (template.yaml, RetentionDays). Enrolled faces and
their photos stay until they are deleted or the person is erased; search probes are never stored at all.
"""

from __future__ import annotations

import time

from candor.core.faces import PhotoRecord
from candor.core.settings import RETENTION_TAG
from candor.ports import ImageStore

DAY_S = 86_400


def expiry(retention_days: int, now: float | None = None) -> int:
    return int(now if now is not None else time.time()) + retention_days * DAY_S


def expire_photo(photo: PhotoRecord, images: ImageStore, retention_days: int) -> None:
    """Marks the record and tags the object; the caller saves the record."""
    photo.expires_at = expiry(retention_days)
    images.add_tag(photo.bucket, photo.key, *RETENTION_TAG)
