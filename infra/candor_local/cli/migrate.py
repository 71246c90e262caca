"""`candor migrate`: move a collection between index engines (in the function, or on Amazon S3 Vectors) while
it keeps being searched and changed (candor/index/migration.py says how nothing is lost)."""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable
from typing import Any

import boto3

from candor.adapters.aws import (
    DynamoChangeLog,
    DynamoCollectionRepository,
    DynamoFaceRepository,
    S3IndexSnapshotStore,
    S3VectorStore,
)
from candor.index.engines import ENGINES
from candor.index.migration import Migration, migrate_collection
from candor_local.cli import connection
from candor_local.cli.client import CandorClient


def register(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "migrate", help="move a collection to another index engine (in-function, s3vectors) without losing a face"
    )
    parser.add_argument("collection")
    parser.add_argument("--engine", required=True, choices=ENGINES)
    parser.add_argument("--stack-name", default=os.environ.get("CANDOR_STACK", "candor"))
    parser.add_argument("--json", action="store_true", help="JSON instead of text")
    parser.set_defaults(run=_run)
    return parser


def _run(args: argparse.Namespace) -> int:
    session, endpoint = connection.stack_session()
    resources = connection.physical_ids(session.client("cloudformation", endpoint_url=endpoint), args.stack_name)
    result = migrate_in_stack(
        args.collection,
        args.engine,
        session=session,
        endpoint_url=endpoint,
        resources=resources,
        stack_name=args.stack_name,
        progress=(lambda line: None) if args.json else print,
    )
    if args.json:
        print(json.dumps(result.__dict__))
    elif not result.moved:
        print(f"{args.collection} is on {args.engine} already")
    return 0


def migrate_for_client(
    client: CandorClient,
    stack_name: str,
    collection_id: str,
    engine: str,
    progress: Callable[[str], None] = print,
) -> Migration:
    """The migration on the stack a client talks to (the demo's embedded one, or AWS_ENDPOINT_URL's)."""
    session, endpoint = client.session, client.stack.endpoint_url
    resources = connection.physical_ids(session.client("cloudformation", endpoint_url=endpoint), stack_name)
    return migrate_in_stack(
        collection_id,
        engine,
        session=session,
        endpoint_url=endpoint,
        resources=resources,
        stack_name=stack_name,
        progress=progress,
    )


def migrate_in_stack(
    collection_id: str,
    engine: str,
    *,
    session: boto3.session.Session,
    endpoint_url: str | None,
    resources: dict[str, str],
    stack_name: str,
    progress: Callable[[str], None] = print,
) -> Migration:
    """The migration, on the stack's own tables, index bucket and vector bucket."""
    dynamodb = session.resource("dynamodb", endpoint_url=endpoint_url)
    s3vectors = session.client("s3vectors", endpoint_url=endpoint_url)
    vector_bucket = resources.get("VectorBucket", "")
    if not vector_bucket.startswith("arn:"):
        # Locally the stack step makes the vector bucket itself (moto's CloudFormation cannot): found by name.
        name = f"{stack_name}-vectorbucket".lower()
        vector_bucket = s3vectors.get_vector_bucket(vectorBucketName=name)["vectorBucket"]["vectorBucketArn"]
    changes = DynamoChangeLog(resources["CollectionChangesTable"], dynamodb)
    return migrate_collection(
        collection_id,
        engine,
        collections=DynamoCollectionRepository(resources["CollectionsTable"], changes, dynamodb),
        faces=DynamoFaceRepository(resources["FacesTable"], dynamodb),
        vector_store=S3VectorStore(vector_bucket, s3vectors),
        snapshots=S3IndexSnapshotStore(resources["IndexBucket"], session.client("s3", endpoint_url=endpoint_url)),
        progress=progress,
    )
