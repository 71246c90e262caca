#!/usr/bin/env bash
# SAM CLI's checks of template.yaml: `sam validate --lint` of the whole template, then `sam build` (no
# container) of its zip functions and layers into .aws-sam/build; container-image functions (PackageType:
# Image) are left out, since building them runs `docker build`. The CLI is installed into its own
# virtualenv, .venv-sam, so its pins never meet the project's; a stamp skips the install when
# requirements/sam.txt and the interpreter are unchanged. Arguments go to `sam build` (e.g. --cached).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
VENV=".venv-sam"
STAMP="$VENV/.candor-sam.sha256"

say() { printf 'sam-checks: %s\n' "$*" >&2; }

# The template's runtime (python3.12) decides the interpreter: `sam build` without a container builds
# with a `python3.12` it finds on PATH, and the virtualenv's own `python` is that one.
RUNTIME="$(sed -n 's/^ *Runtime: \(python[0-9.]*\).*/\1/p' template.yaml | head -n 1)"

find_python() {
    local candidate
    for candidate in "${SAM_PYTHON:-}" "$(command -v "$RUNTIME" || true)" \
        "$(pyenv root 2>/dev/null)"/versions/"${RUNTIME#python}"*/bin/"$RUNTIME"; do
        # A pyenv shim is on PATH even when that version is not selected: it must actually run.
        if [[ -n "$candidate" && -x "$candidate" ]] && "$candidate" -c 'pass' 2>/dev/null; then
            printf '%s\n' "$candidate"
            return 0
        fi
    done
    return 1
}

if [[ ! -x "$VENV/bin/python" ]]; then
    if ! PYTHON="$(find_python)"; then
        say "no $RUNTIME found (the template's runtime; sam build needs it): set SAM_PYTHON=/path/to/$RUNTIME"
        exit 1
    fi
    say "creating $VENV with $PYTHON"
    "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"

wanted="$("$PY" - <<'PYEOF'
import hashlib, pathlib, sys
print(hashlib.sha256(sys.version.encode() + pathlib.Path("requirements/sam.txt").read_bytes()).hexdigest())
PYEOF
)"
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$wanted" ]]; then
    say "SAM CLI up to date ($("$VENV/bin/sam" --version))"
else
    started=$SECONDS
    say "installing requirements/sam.txt into $VENV"
    "$PY" -m pip install --disable-pip-version-check --quiet -r requirements/sam.txt
    printf '%s\n' "$wanted" >"$STAMP"
    say "SAM CLI installed in $((SECONDS - started)) s ($("$VENV/bin/sam" --version))"
fi

# The virtualenv first on PATH: sam, and the python3.12 that builds the functions; no telemetry from CI.
export PATH="$PWD/$VENV/bin:$PATH"
export SAM_CLI_TELEMETRY=0
# Lint and build need no account; a region keeps the CLI from asking for one.
export AWS_DEFAULT_REGION="${AWS_DEFAULT_REGION:-us-east-1}"

# The template's container-image functions, by logical id (the short-form tags are read, not resolved).
mapfile -t IMAGE_FUNCTIONS < <("$PY" - <<'PYEOF'
import yaml

class Loader(yaml.SafeLoader):
    pass

Loader.add_multi_constructor("!", lambda loader, suffix, node: None)
with open("template.yaml", encoding="utf-8") as handle:
    resources = yaml.load(handle, Loader=Loader)["Resources"]
for logical_id, resource in resources.items():
    if resource["Type"] == "AWS::Serverless::Function" and (resource.get("Properties") or {}).get("PackageType") == "Image":
        print(logical_id)
PYEOF
)
EXCLUDE=()
for function in "${IMAGE_FUNCTIONS[@]}"; do
    EXCLUDE+=(--exclude "$function")
done

started=$SECONDS
say "sam validate --lint"
sam validate --lint --template-file template.yaml
if ((${#IMAGE_FUNCTIONS[@]})); then
    say "not built here: ${IMAGE_FUNCTIONS[*]} (container images; \`sam build\` builds them where Docker runs)"
fi
say "sam build (no container) into .aws-sam/build"
sam build --template-file template.yaml --build-dir .aws-sam/build "${EXCLUDE[@]}" "$@"
say "validated and built in $((SECONDS - started)) s"
