#!/usr/bin/env bash
# One command for a fresh machine: the virtualenv, the pinned dependencies, then the models and sample
# photos (python -m candor_local.packaging.models). Safe to re-run: each step skips what is already done.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
VENV=".venv"
STAMP="$VENV/.candor-requirements.sha256"

say() { printf 'setup: %s\n' "$*" >&2; }

if [[ ! -x "$VENV/bin/python" ]]; then
    PYTHON="${PYTHON:-$(command -v python3.11 || command -v python3 || true)}"
    if [[ -z "$PYTHON" ]]; then
        say "no python3.11 or python3 on PATH (set PYTHON=/path/to/python3.11)"
        exit 1
    fi
    say "creating $VENV with $PYTHON"
    "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"
if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    say "$VENV runs Python $("$PY" -c 'import platform; print(platform.python_version())'); Candor needs 3.11+."
    say "remove $VENV and run again with PYTHON=/path/to/python3.11"
    exit 1
fi

# The stamp records what was installed: the requirement files, pyproject.toml and the interpreter.
wanted="$("$PY" - <<'PYEOF'
import hashlib, pathlib, sys
digest = hashlib.sha256(sys.version.encode())
for path in sorted(pathlib.Path("requirements").glob("*.txt")) + [pathlib.Path("pyproject.toml")]:
    digest.update(path.name.encode() + b"\0" + path.read_bytes())
print(digest.hexdigest())
PYEOF
)"
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$wanted" ]]; then
    say "dependencies up to date"
else
    started=$SECONDS
    say "installing requirements/dev.txt into $VENV"
    "$PY" -m pip install --disable-pip-version-check --quiet -r requirements/dev.txt
    say "installing candor (editable)"
    "$PY" -m pip install --disable-pip-version-check --quiet -e .
    printf '%s\n' "$wanted" >"$STAMP"
    say "dependencies installed in $((SECONDS - started)) s"
fi

say "models and sample photos"
"$PY" -m candor_local.packaging.models
