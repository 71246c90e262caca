#!/usr/bin/env bash
# Start LocalStack (Docker), then run the integration suite against it: the same tests CI runs against the
# embedded moto server, with only AWS_ENDPOINT_URL changed. Needs Docker with the compose plugin.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

compose=(docker compose -f infra/localstack/compose.yaml)
bash scripts/setup.sh
"${compose[@]}" up -d --wait
trap '"${compose[@]}" down' EXIT

export AWS_ENDPOINT_URL=http://localhost:4566
export AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_DEFAULT_REGION=us-east-1
# LocalStack does not support Amazon S3 Vectors: the stack deploys without its vector bucket there, collections
# stay on the in-function engine, and the tests of the s3vectors engine are left out.
.venv/bin/python -m pytest -q -m "integration and not s3vectors" "$@"
