"""How big each function is once deployed: its code plus its layers, unzipped, against Lambda's limit.

Two measures of the same thing. `estimate` needs no SAM CLI (tests/test_artifacts.py runs it in CI): the
function's code, the shared package, the models the model layer's Makefile copies, and the dependencies it
installs, sized from this virtualenv's installed files (RECORD, bytecode included: pip compiles it on
install, in the layer as here). `built` reads what `sam build` wrote to .aws-sam/build. They agree within
about 1% (cp311 wheels here, cp312 in the layer). `python -m candor_local.packaging.artifacts` prints both.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from packaging.markers import Marker
from packaging.requirements import Requirement

from candor.core.settings import DEFAULT_MODEL_DIR
from candor_local.emulator.template import Template, load_template

REPO = Path(__file__).resolve().parents[3]
BUILD_DIR = REPO / ".aws-sam" / "build"
# Lambda's quota for a function and all its layers, unzipped (zip packaging): "250 MB" is 250 MiB.
LAMBDA_UNZIPPED_LIMIT_BYTES = 262_144_000
# What the model layer's Makefile leaves out because the Lambda runtime provides it.
PROVIDED_BY_LAMBDA = frozenset({"boto3", "botocore"})


@dataclass(frozen=True)
class Artefact:
    function: str
    parts: Mapping[str, int]  # code, each layer: bytes

    @property
    def total_bytes(self) -> int:
        return sum(self.parts.values())

    @property
    def headroom_bytes(self) -> int:
        return LAMBDA_UNZIPPED_LIMIT_BYTES - self.total_bytes


def tree_bytes(path: Path) -> int:
    """Bytes of the files under `path`, bytecode caches left out (sam build leaves them out of code)."""
    return sum(
        file.stat().st_size
        for file in path.rglob("*")
        if file.is_file() and "__pycache__" not in file.parts and file.suffix != ".pyc"
    )


def requirement_names(requirements: Path) -> list[str]:
    """The packages a requirements file pins, less what Lambda provides (as the Makefile filters them)."""
    names = []
    for line in requirements.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            name = Requirement(line).name.lower()
            if name not in PROVIDED_BY_LAMBDA:
                names.append(name)
    return names


def installed_bytes(names: Iterable[str]) -> dict[str, int]:
    """Installed bytes of `names` and everything they need (no extras), by distribution."""
    sizes: dict[str, int] = {}
    todo = list(names)
    while todo:
        name = todo.pop()
        if name in sizes:
            continue
        distribution = metadata.distribution(name)
        sizes[name] = sum(
            located.stat().st_size
            for file in distribution.files or []
            if (located := Path(str(distribution.locate_file(file)))).is_file()
        )
        for requirement in map(Requirement, distribution.requires or []):
            if requirement.marker is None or _applies(requirement.marker):
                todo.append(requirement.name.lower())
    return sizes


def _applies(marker: Marker) -> bool:
    return marker.evaluate({"extra": ""})


def layer_models(makefile: Path) -> list[str]:
    """The model files a layer's Makefile copies (its LAYER_MODELS line)."""
    found = re.search(r"^LAYER_MODELS\s*:=\s*(.*)$", makefile.read_text(encoding="utf-8"), re.MULTILINE)
    return found.group(1).split() if found else []


def estimate_layer(layer_dir: Path, model_dir: Path = DEFAULT_MODEL_DIR) -> int:
    """Unzipped bytes of a layer as `sam build` makes it, without running it."""
    size = tree_bytes(layer_dir / "python") if (layer_dir / "python").is_dir() else 0
    makefile = layer_dir / "Makefile"
    if makefile.is_file():
        size += sum((model_dir / name).stat().st_size for name in layer_models(makefile))
        if "requirements/runtime.txt" in makefile.read_text(encoding="utf-8"):
            size += sum(installed_bytes(requirement_names(REPO / "requirements" / "runtime.txt")).values())
    return size


def estimate(template: Template, model_dir: Path = DEFAULT_MODEL_DIR) -> list[Artefact]:
    """Each zip function's code and layers, unzipped, as `sam build` would write them. Container-image
    functions are left out: their limit is the image's 10 GB, not the 250 MB these sizes are checked against."""
    layers: dict[Path, int] = {}
    artefacts = []
    for spec in template.functions.values():
        if spec.is_image:
            continue
        parts = {"code": tree_bytes(spec.code_dir)}
        for layer_id, layer_dir in zip(layer_ids(template, spec.layer_dirs), spec.layer_dirs, strict=True):
            if layer_dir not in layers:
                layers[layer_dir] = estimate_layer(layer_dir, model_dir)
            parts[layer_id] = layers[layer_dir]
        artefacts.append(Artefact(spec.logical_id, parts))
    return artefacts


def built(template: Template, build_dir: Path = BUILD_DIR) -> list[Artefact]:
    """What `sam build` wrote: each zip function's folder and its layers' folders, by logical id."""
    artefacts = []
    for spec in template.functions.values():
        if spec.is_image:
            continue
        parts = {"code": _all_bytes(build_dir / spec.logical_id)}
        for layer_id in layer_ids(template, spec.layer_dirs):
            parts[layer_id] = _all_bytes(build_dir / layer_id)
        artefacts.append(Artefact(spec.logical_id, parts))
    return artefacts


def layer_ids(template: Template, layer_dirs: Iterable[Path]) -> list[str]:
    """The SAM logical ids of layers by their folders (sam build names its output folders after them)."""
    by_dir = {
        (template.path.parent / resource["Properties"]["ContentUri"]).resolve(): logical_id
        for logical_id, resource in template.sam["Resources"].items()
        if resource["Type"] == "AWS::Serverless::LayerVersion"
    }
    return [by_dir[layer_dir] for layer_dir in layer_dirs]


def _all_bytes(path: Path) -> int:
    if not path.is_dir():
        raise FileNotFoundError(f"{path} not built: run `bash scripts/sam-checks.sh`")
    return sum(file.stat().st_size for file in path.rglob("*") if file.is_file())


def _table(title: str, artefacts: list[Artefact]) -> str:
    def mb(size: int) -> str:
        return f"{size / 1e6:.1f} MB"

    lines = [title, "| function | parts | total | headroom |", "| --- | --- | --- | --- |"]
    for artefact in artefacts:
        parts = ", ".join(f"{name} {mb(size)}" for name, size in artefact.parts.items())
        lines.append(f"| {artefact.function} | {parts} | {mb(artefact.total_bytes)} | {mb(artefact.headroom_bytes)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--template", type=Path, default=REPO / "template.yaml")
    args = parser.parse_args(argv)
    template = load_template(args.template)
    print(f"Lambda's limit: {LAMBDA_UNZIPPED_LIMIT_BYTES / 1e6:.1f} MB unzipped (250 MiB), code and layers.\n")
    print(_table("Estimated from this virtualenv (no sam):", estimate(template)))
    if (BUILD_DIR / "template.yaml").is_file():
        print()
        print(_table(f"Built by sam build ({BUILD_DIR.relative_to(REPO)}):", built(template)))


if __name__ == "__main__":
    main()
