"""ShardFunction: one shard of a large collection, kept warm, searched for the search function.

Invoked by SearchFunction (never by an event) once a collection has more than one index shard: one
invocation per shard, in parallel (candor/index/shards.py). The request carries the collection's change number, so
the shard applies the same changes the caller has seen before it answers.
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.typing import LambdaContext

from candor.adapters.aws import DynamoChangeLog, DynamoFaceRepository, S3IndexSnapshotStore
from candor.core.settings import Settings
from candor.index.shard_search import ShardSearch
from candor.index.sync import IndexSync

settings = Settings.from_env()
logger = Logger()
snapshots = S3IndexSnapshotStore(settings.index_bucket) if settings.index_bucket else None
shard_search = ShardSearch(
    DynamoFaceRepository(settings.faces_table),
    DynamoChangeLog(settings.collection_changes_table),
    IndexSync(snapshots),
)


@logger.inject_lambda_context
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    logger.append_keys(collection_id=event.get("collection_id"), shard=event.get("shard"))
    return shard_search.handle(event)
