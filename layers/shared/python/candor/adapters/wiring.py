"""What the functions that search build alike at cold start: the models, and the collections' indexes read
from DynamoDB, the index snapshots and S3 Vectors (the handlers name the rest)."""

from __future__ import annotations

from candor.adapters.aws import (
    DynamoChangeLog,
    DynamoCollectionRepository,
    DynamoFaceRepository,
    S3IndexSnapshotStore,
    S3VectorStore,
    model_source,
)
from candor.core.settings import DETECTOR_FILE, EMBEDDER_FILE, Settings
from candor.index.engines import IndexEngines
from candor.index.sync import IndexSync
from candor.ports import FaceDetector, FaceEmbedder
from candor.search import CollectionIndexes
from candor.vision.model_files import model_dir_with
from candor.vision.models import load_models


def detector_and_embedder(settings: Settings) -> tuple[FaceDetector, FaceEmbedder]:
    """YuNet and the embedder; a model missing from MODEL_DIR comes from the model bucket, checked."""
    model_dir = model_dir_with(
        [DETECTOR_FILE, EMBEDDER_FILE], settings.model_dir, model_source(settings.model_bucket, settings.model_prefix)
    )
    return load_models(model_dir, settings.model_threads)


def collection_indexes(settings: Settings) -> CollectionIndexes:
    """Each collection's index as SearchFunction loads it: its snapshot, then its change log."""
    collections = DynamoCollectionRepository(
        settings.collections_table, DynamoChangeLog(settings.collection_changes_table)
    )
    snapshots = S3IndexSnapshotStore(settings.index_bucket) if settings.index_bucket else None
    vector_store = S3VectorStore(settings.vector_bucket) if settings.vector_bucket else None
    return CollectionIndexes(
        DynamoFaceRepository(settings.faces_table),
        collections,
        IndexSync(snapshots, engines=IndexEngines(vector_store)),
    )
