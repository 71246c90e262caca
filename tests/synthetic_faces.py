"""Synthetic enrolled faces for index tests: people as random unit centres, photos as noisy copies, so a
photo's true neighbours are the other photos of its person (cosine ~0.7) and strangers score ~0."""

from __future__ import annotations

import numpy as np

from candor.core.faces import BoundingBox, FaceRecord
from candor.core.settings import EMBEDDING_SIZE

DIMENSION = EMBEDDING_SIZE


def unit(vectors: np.ndarray) -> np.ndarray:
    return (vectors / np.linalg.norm(vectors, axis=-1, keepdims=True)).astype(np.float32)


def uid(person: int, photo: int) -> str:
    """A face id in Rekognition's pattern that says whose photo it is."""
    return f"{person:08x}-0000-4000-8000-{photo:012x}"


def enrolled_people(count: int, photos: int, seed: int) -> tuple[list[FaceRecord], np.ndarray]:
    """`photos` faces of each of `count` people, enrolled in "staff" as person<n> with face ids uid(n, photo),
    and one new photo (a probe) of each person."""
    rng = np.random.default_rng(seed)
    centres = unit(rng.standard_normal((count, DIMENSION)))
    noise = 0.6 / np.sqrt(DIMENSION)
    vectors = unit(np.repeat(centres, photos, axis=0) + noise * rng.standard_normal((count * photos, DIMENSION)))
    records = [
        FaceRecord(
            face_id=uid(person, photo),
            photo_id=f"photo-{uid(person, photo)}",
            bounding_box=BoundingBox(10, 10, 50, 50),
            confidence=0.99,
            embedding=vectors[person * photos + photo],
            model_version="test",
            collection_id="staff",
            external_image_id=f"person{person}",
        )
        for person in range(count)
        for photo in range(photos)
    ]
    return records, unit(centres + noise * rng.standard_normal((count, DIMENSION)))
