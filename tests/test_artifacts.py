"""Packaging: every zip function with its layers stays within Lambda's 250 MB unzipped limit, and the model that
does not fit there (FaceNet) comes from the model bucket, checked against its pinned sha256. The sizes are
computed without the SAM CLI (candor_local.packaging.artifacts); when `sam build` has run (scripts/sam-checks.sh, as
CI does before pytest), the built folders are checked too. Container-image functions (VideoFunction) have
Lambda's 10 GB image limit instead, and are built only where Docker runs: not into .aws-sam/build here."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path

import boto3
import pytest
from moto import mock_aws

from candor.adapters.aws import S3ModelSource, model_source
from candor.core import settings
from candor.vision import model_files
from candor.vision.model_files import ModelChecksumError, model_dir_with
from candor_local.emulator.template import Template, load_template
from candor_local.packaging import artifacts

ROOT = Path(__file__).resolve().parents[1]
# Lambda's default /tmp when a function sets no EphemeralStorage (MB as Lambda counts them).
DEFAULT_EPHEMERAL_MB = 512


@pytest.fixture(scope="module")
def template() -> Template:
    return load_template(ROOT / "template.yaml")


@pytest.fixture(scope="module")
def zip_template(template: Template) -> Template:
    """The template with its zip functions only: what the 250 MB limit and scripts/sam-checks.sh's build are for."""
    return replace(template, functions={name: f for name, f in template.functions.items() if not f.is_image})


def _mb(size: int) -> str:
    return f"{size / 1e6:.1f} MB"


def test_every_function_with_its_layers_fits_lambdas_unzipped_limit(zip_template: Template, model_dir: Path) -> None:
    assert set(zip_template.functions) >= {"DetectFunction", "EmbedFunction", "SearchFunction"}
    for artefact in artifacts.estimate(zip_template, model_dir):
        assert artefact.total_bytes <= artifacts.LAMBDA_UNZIPPED_LIMIT_BYTES, (
            f"{artefact.function} is {_mb(artefact.total_bytes)} unzipped with its layers "
            f"({dict(artefact.parts)}), over Lambda's {_mb(artifacts.LAMBDA_UNZIPPED_LIMIT_BYTES)}"
        )


def test_the_built_artefacts_fit_and_match_the_estimate(
    template: Template, zip_template: Template, model_dir: Path
) -> None:
    if not (artifacts.BUILD_DIR / "template.yaml").is_file():
        pytest.skip("no .aws-sam/build here: bash scripts/sam-checks.sh builds it")
    # Image functions are left out of the build here (scripts/sam-checks.sh: `docker build` makes them).
    images = set(template.functions) - set(zip_template.functions)
    assert images == {"VideoFunction"}
    assert not any((artifacts.BUILD_DIR / name).exists() for name in images)
    estimated = {a.function: a.total_bytes for a in artifacts.estimate(zip_template, model_dir)}
    for artefact in artifacts.built(zip_template):
        assert artefact.total_bytes <= artifacts.LAMBDA_UNZIPPED_LIMIT_BYTES, (
            f"{artefact.function} built is {_mb(artefact.total_bytes)} ({dict(artefact.parts)})"
        )
        # A build older than the requirements, or an estimate that no longer measures what the build does.
        assert abs(artefact.total_bytes - estimated[artefact.function]) <= 0.05 * estimated[artefact.function]


def test_each_model_is_in_the_layer_or_fetched_into_tmp_where_it_fits(template: Template, model_dir: Path) -> None:
    in_layer = set(artifacts.layer_models(ROOT / "layers" / "models" / "Makefile"))
    fetched = {settings.DETECTOR_FILE, settings.EMBEDDER_FILE} - in_layer
    assert in_layer == {settings.DETECTOR_FILE}  # the detector needs no bucket: DetectFunction never fetches
    fetched_bytes = sum((model_dir / name).stat().st_size for name in fetched)
    for logical_id in ("EmbedFunction", "SearchFunction"):
        ephemeral_mb = template.sam["Resources"][logical_id]["Properties"].get("EphemeralStorage", {}).get("Size")
        assert fetched_bytes < (ephemeral_mb or DEFAULT_EPHEMERAL_MB) * 1e6 / 2, logical_id


# ---------------------------------------------------------------- models from the bucket


class FakeBucket:
    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = files
        self.fetched: list[str] = []

    def fetch(self, name: str, destination: Path) -> None:
        self.fetched.append(name)
        destination.write_bytes(self.files[name])


@pytest.fixture
def pinned(monkeypatch: pytest.MonkeyPatch) -> dict[str, bytes]:
    files = {"detector.onnx": b"small", "embedder.onnx": b"large"}
    digests = {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}
    monkeypatch.setattr(model_files, "MODEL_SHA256", digests)
    return files


def test_a_model_missing_from_the_layer_is_fetched_once_beside_links_to_the_others(
    tmp_path: Path, pinned: dict[str, bytes]
) -> None:
    layer = tmp_path / "opt-models"
    layer.mkdir()
    (layer / "detector.onnx").write_bytes(pinned["detector.onnx"])
    bucket = FakeBucket(pinned)
    names = ["detector.onnx", "embedder.onnx"]

    found = model_dir_with(names, layer, bucket, fetched_dir=tmp_path / "tmp")
    again = model_dir_with(names, layer, bucket, fetched_dir=tmp_path / "tmp")  # a warm start

    assert found == again == tmp_path / "tmp"
    assert bucket.fetched == ["embedder.onnx"]
    assert {name: (found / name).read_bytes() for name in names} == pinned
    assert not list(found.glob(".*.part"))


def test_a_complete_model_dir_or_no_bucket_fetches_nothing(tmp_path: Path, pinned: dict[str, bytes]) -> None:
    bucket = FakeBucket(pinned)
    assert model_dir_with(["detector.onnx"], tmp_path, None) == tmp_path  # load_models names what is missing
    (tmp_path / "detector.onnx").write_bytes(pinned["detector.onnx"])
    assert model_dir_with(["detector.onnx"], tmp_path, bucket, fetched_dir=tmp_path / "tmp") == tmp_path
    assert bucket.fetched == []


def test_a_fetched_model_with_another_digest_is_never_loaded(tmp_path: Path, pinned: dict[str, bytes]) -> None:
    bucket = FakeBucket({"embedder.onnx": b"tampered"})
    with pytest.raises(ModelChecksumError, match=r"embedder\.onnx"):
        model_dir_with(["embedder.onnx"], tmp_path / "layer", bucket, fetched_dir=tmp_path / "tmp")
    assert list((tmp_path / "tmp").iterdir()) == []


def test_the_model_bucket_adapter_reads_the_prefixed_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(name, "testing")
    with mock_aws():
        s3 = boto3.client("s3")
        s3.create_bucket(Bucket="models")
        s3.put_object(Bucket="models", Key="candor/models/embedder.onnx", Body=b"weights")
        source = model_source("models", "candor/models/")
        assert isinstance(source, S3ModelSource)
        source.fetch("embedder.onnx", tmp_path / "embedder.onnx")
    assert (tmp_path / "embedder.onnx").read_bytes() == b"weights"
    assert model_source("", "candor/models/") is None
