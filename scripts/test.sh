#!/usr/bin/env bash
# Everything CI checks: setup, the test suite (arguments go to pytest), ruff and mypy. Every check runs even
# when an earlier one fails, so one run shows all problems; the exit status is non-zero if any failed.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh

failed=()
run() {
    local name="$1"
    shift
    printf '\ntest: %s\n' "$name" >&2
    "$@" || failed+=("$name")
}

# SAM CLI's checks first: `sam build` leaves .aws-sam/build, whose sizes tests/test_artifacts.py checks.
run "sam validate and build" bash scripts/sam-checks.sh
run pytest .venv/bin/python -m pytest -q "$@"
run ruff .venv/bin/ruff check .
run mypy .venv/bin/mypy layers/shared/python/candor infra/candor_local benchmarks
# Every function's handler is a module named `app`, as Lambda wants: each service is checked on its own.
for service in services/*/; do
    run "mypy ${service}" .venv/bin/mypy "$service"
done

if ((${#failed[@]})); then
    printf '\ntest: FAILED: %s\n' "${failed[*]}" >&2
    exit 1
fi
printf '\ntest: all checks passed\n' >&2
