"""Who a photo enrols, and the identifiers the pipeline gives photos and faces.

An upload enrols its largest face when it says where it goes, in one of two ways (metadata wins):
- object metadata `candor-collection`, `candor-person` and optionally `candor-consent`;
- a key laid out as `enroll/<collection_id>/<person>/<file name>`.
Any other upload is detected and embedded, never indexed.
"""

from __future__ import annotations

import re
import uuid

from candor.core.errors import InvalidParameterError
from candor.core.faces import Enrolment
from candor.core.settings import ENROLL_PREFIX

# Rekognition's patterns for CollectionId and ExternalImageId.
COLLECTION_ID_PATTERN = re.compile(r"^[a-zA-Z0-9_.\-]{1,255}$")
EXTERNAL_IMAGE_ID_PATTERN = re.compile(r"^[a-zA-Z0-9_.\-:]{1,255}$")

META_COLLECTION = "candor-collection"
META_PERSON = "candor-person"
META_CONSENT = "candor-consent"

_NAMESPACE = uuid.UUID("8d7b1e36-2f0a-4c7e-9a51-6f0c2d3b9e14")


def validate_collection_id(collection_id: str) -> str:
    if not COLLECTION_ID_PATTERN.match(collection_id):
        raise InvalidParameterError(
            f"collection id {collection_id!r} must be 1-255 characters of letters, digits, '_', '.', '-'"
        )
    return collection_id


def validate_external_image_id(external_image_id: str) -> str:
    if not EXTERNAL_IMAGE_ID_PATTERN.match(external_image_id):
        raise InvalidParameterError(
            f"person {external_image_id!r} must be 1-255 characters of letters, digits, '_', '.', '-', ':'"
        )
    return external_image_id


def enrolment_for(key: str, metadata: dict[str, str]) -> Enrolment | None:
    """The enrolment an upload asks for, or None for a photo that is only detected and embedded."""
    meta = {name.lower(): value for name, value in metadata.items()}
    consent = meta.get(META_CONSENT) or None
    if META_COLLECTION in meta or META_PERSON in meta:
        collection_id = meta.get(META_COLLECTION, "")
        person = meta.get(META_PERSON, "")
        if not collection_id or not person:
            raise InvalidParameterError(f"metadata needs both {META_COLLECTION} and {META_PERSON} to enrol")
        return Enrolment(validate_collection_id(collection_id), validate_external_image_id(person), consent)
    if not key.startswith(ENROLL_PREFIX):
        return None
    parts = key[len(ENROLL_PREFIX) :].split("/")
    if len(parts) != 3 or not all(parts):
        raise InvalidParameterError(
            f"key {key!r} is under {ENROLL_PREFIX} but is not {ENROLL_PREFIX}<collection_id>/<person>/<file>"
        )
    collection_id, person, _file_name = parts
    return Enrolment(validate_collection_id(collection_id), validate_external_image_id(person), consent)


def photo_id_for(bucket: str, key: str) -> str:
    """Stable per object, so a redelivered event or a re-upload updates the same records."""
    return str(uuid.uuid5(_NAMESPACE, f"s3://{bucket}/{key}"))


def face_id_for(photo_id: str, index: int) -> str:
    return str(uuid.uuid5(_NAMESPACE, f"{photo_id}#{index}"))
