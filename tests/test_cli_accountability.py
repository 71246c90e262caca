"""The accountability rules from the command line, through the local runtime: collections created with a
policy, `collections policy` to read and change it, searches stating purpose and case, enrolment that
needs a consent reference, and `candor erase` with its proof; what the user reads and the exit status."""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from lambda_helpers import connect_cli

from candor_local.emulator.runtime import LocalEnvironment

pytestmark = pytest.mark.integration

STATEMENT_VARIABLES = ("CANDOR_PURPOSE", "CANDOR_CASE", "CANDOR_CONSENT")


@pytest.fixture(scope="module")
def env(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalEnvironment]:
    with LocalEnvironment.start(
        stack_name="candor-cli-rules", model_dir=model_dir, log_dir=tmp_path_factory.mktemp("logs")
    ) as environment:
        yield environment


@pytest.fixture
def cli(env: LocalEnvironment, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """`candor` connected to this environment through the state file `candor up` writes."""
    from candor_local.cli import main as candor_cli

    connect_cli(env, tmp_path / "up.json", monkeypatch)
    for name in STATEMENT_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    return candor_cli.main


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def _out(capsys: pytest.CaptureFixture) -> str:
    return str(capsys.readouterr().out)


def test_a_collection_is_created_with_a_policy_that_policy_shows_and_changes(
    cli: Any, capsys: pytest.CaptureFixture
) -> None:
    collection = _name("cases")
    created = ["collections", "create", collection, "--purpose", "investigation", "--purpose", "general"]
    assert cli([*created, "--searches-per-caller", "30"]) == 0
    assert _out(capsys).splitlines() == [
        f"created arn:aws:rekognition:us-east-1:000000000000:collection/{collection}",
        "  purposes: investigation, general",
        "  use: search only, no identification; match threshold at least 80",
        "  searches a minute: 30 per caller, 600 in all",
        "  false-match risk per searched face: no limit",
    ]

    assert cli(["collections", "policy", collection]) == 0
    assert _out(capsys).splitlines()[0] == f"{collection}:"
    # A changed flag changes its field only: the purposes and quotas set at creation stay.
    assert cli(["collections", "policy", collection, "--identification", "--searches-per-minute", "100"]) == 0
    assert _out(capsys).splitlines() == [
        f"{collection}: policy changed",
        "  purposes: investigation, general",
        "  use: identification; match threshold at least 99",
        "  searches a minute: 30 per caller, 100 in all",
        "  false-match risk per searched face: at most 1.00% (the identification default)",
    ]
    assert cli(["collections", "policy", collection, "--json"]) == 0
    assert json.loads(_out(capsys)) == {
        "Policy": {
            "Purposes": ["investigation", "general"],
            "Identification": True,
            "MinFaceMatchThreshold": 99,
            "SearchesPerCallerPerMinute": 30,
            "SearchesPerMinute": 100,
        }
    }
    # Loosening waits for the stack's delay (24 h): the rules in force stay, the change is shown pending.
    assert cli(["collections", "policy", collection, "--no-identification", "--min-threshold", "90"]) == 0
    lines = _out(capsys).splitlines()
    assert lines[2] == "  use: identification; match threshold at least 99"
    assert lines[5].startswith("  pending, in force from ") and lines[5].endswith(
        ": drops identification; lowers the match threshold floor from 99 to 90; "
        "removes the false-match risk limit of 1.00%"
    )
    assert "    use: search only, no identification; match threshold at least 90" in lines
    # Tightening is immediate (and replaces the pending loosening).
    assert cli(["collections", "policy", collection, "--max-false-match-risk", "0.5%"]) == 0
    lines = _out(capsys).splitlines()
    assert "  false-match risk per searched face: at most 0.50%" in lines
    assert not any(line.startswith("  pending") for line in lines)

    # A plain create is Rekognition's, and declares the purpose general only.
    plain = _name("plain")
    assert cli(["collections", "create", plain]) == 0
    assert _out(capsys) == f"created arn:aws:rekognition:us-east-1:000000000000:collection/{plain}\n"
    assert cli(["collections", "policy", plain]) == 0
    assert "  purposes: general" in _out(capsys).splitlines()

    assert cli(["collections", "policy", collection, "--min-threshold", "50"]) == 1
    assert "InvalidParameterException" in capsys.readouterr().err
    assert cli(["collections", "policy", _name("missing")]) == 1
    assert "ResourceNotFoundException" in capsys.readouterr().err


def test_searches_state_a_declared_purpose_and_a_case(
    cli: Any, faces_dir: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    collection = _name("casework")
    assert cli(["collections", "create", collection, "--purpose", "investigation", "--identification"]) == 0
    obama = str(faces_dir / "enroll/obama/obama.jpg")
    assert cli(["faces", "index", obama, "--collection", collection, "--external-id", "obama", "--consent", "f-1"]) == 0
    capsys.readouterr()
    probe = ["faces", "search", "--image", str(faces_dir / "probe/obama1.jpg"), "--collection", collection]

    # The collection declares investigation only: no purpose stated is `general`, refused.
    assert cli(probe) == 1
    assert "AccessDeniedException" in capsys.readouterr().err
    assert cli([*probe, "--purpose", "marketing", "--case", "c-1"]) == 1
    assert "AccessDeniedException" in capsys.readouterr().err
    assert cli([*probe, "--purpose", "investigation"]) == 1
    assert "X-Candor-Case" in capsys.readouterr().err
    # An identification collection searches at 99 or more; without --threshold its floor applies.
    assert cli([*probe, "--purpose", "investigation", "--case", "c-1", "--threshold", "90"]) == 1
    assert "InvalidParameterException" in capsys.readouterr().err
    assert cli([*probe, "--purpose", "investigation", "--case", "c-1", "--json"]) == 0
    assert all(match["Similarity"] >= 99 for match in json.loads(_out(capsys))["FaceMatches"])

    # The statement can come from the environment, for every face API command and `candor search`.
    monkeypatch.setenv("CANDOR_PURPOSE", "investigation")
    monkeypatch.setenv("CANDOR_CASE", "c-2")
    assert cli([*probe, "--json"]) == 0
    assert "FaceMatches" in json.loads(_out(capsys))
    assert cli(["search", str(faces_dir / "probe/obama1.jpg"), "--collection", collection]) == 0
    # One face at the floor 99 (one in a million): the chance of a stranger among its matches is printed.
    assert _out(capsys).startswith("obama1.jpg: 1 face (chance of a stranger among a face's matches: 0.0001%)")
    assert cli(["search", str(faces_dir / "probe/obama1.jpg"), "--collection", collection, "--json"]) == 0
    assert json.loads(_out(capsys))["false_match_risk"] == pytest.approx(1e-6)


def test_the_search_quota_per_caller_is_enforced(cli: Any, faces_dir: Path, capsys: pytest.CaptureFixture) -> None:
    collection = _name("quota")
    assert cli(["collections", "create", collection, "--searches-per-caller", "1"]) == 0
    biden = str(faces_dir / "enroll/biden/biden.jpg")
    assert cli(["faces", "index", biden, "--collection", collection, "--external-id", "biden", "--consent", "f-2"]) == 0
    capsys.readouterr()
    # Both searches in one minute of the quota's clock.
    if time.time() % 60 > 45:
        time.sleep(61 - time.time() % 60)
    probe = ["faces", "search", "--image", biden, "--collection", collection]
    assert cli(probe) == 0
    assert _out(capsys).split()[0] == "biden"
    assert cli(probe) == 1
    assert "LimitExceededException" in capsys.readouterr().err


def test_enrolment_needs_a_consent_reference(cli: Any, faces_dir: Path, capsys: pytest.CaptureFixture) -> None:
    collection = _name("consent")
    obama = str(faces_dir / "enroll/obama/obama.jpg")
    with pytest.raises(SystemExit) as refused:
        cli(["enroll", obama, "--person", "obama", "--collection", collection])
    assert refused.value.code == 2
    assert "the following arguments are required: --consent" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli(["enroll", "--help"])
    assert "consent reference" in " ".join(_out(capsys).split())

    assert cli(["collections", "create", collection]) == 0
    capsys.readouterr()
    # `faces index` says so before sending anything: nothing is indexed.
    assert cli(["faces", "index", obama, "--collection", collection]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "needs the consent reference" in captured.err and "--consent" in captured.err
    assert cli(["faces", "list", "--collection", collection]) == 0
    assert _out(capsys).splitlines() == ["0 face(s)"]

    assert cli(["enroll", obama, "--person", "obama", "--collection", collection, "--consent", "form-7"]) == 0
    assert _out(capsys) == f"{obama}: obama enrolled\n"
    assert cli(["faces", "list", "--collection", collection]) == 0
    assert _out(capsys).splitlines()[-1] == "1 face(s)"


def test_erase_removes_a_person_and_proves_it(cli: Any, faces_dir: Path, capsys: pytest.CaptureFixture) -> None:
    collection = _name("erase")
    enrol = ["enroll", str(faces_dir / "enroll"), "--collection", collection, "--consent", "form-9"]
    assert cli(enrol) == 0
    enrolled = _out(capsys).splitlines()
    assert enrolled and all(line.endswith(" enrolled") for line in enrolled)
    obama_photos = sum(1 for line in enrolled if line.endswith(": obama enrolled"))
    assert obama_photos > 1

    # Every enrolment photo of Obama goes, with its face; the proof searches with one of them.
    assert cli(["erase", "obama", "--collection", collection]) == 0
    erased, proof = _out(capsys).splitlines()
    assert erased == f"erased obama from {collection}: {obama_photos} face(s), {obama_photos} photo(s), no user"
    assert re.fullmatch(r"proof: searched with their photo, [1-9]\d* face\(s\), no match left", proof)
    assert cli(["faces", "list", "--collection", collection]) == 0
    listed = _out(capsys).splitlines()
    assert listed[-1] == f"{len(enrolled) - obama_photos} face(s)" and not any(" obama " in line for line in listed)
    assert cli(["faces", "search", "--image", str(faces_dir / "probe/obama1.jpg"), "--collection", collection]) == 0
    assert _out(capsys) == "no match\n"

    # A face indexed from bytes leaves no photo behind: the proof needs one given with --photo.
    biden = str(faces_dir / "enroll/biden/biden.jpg")
    second_name = ["faces", "index", biden, "--collection", collection, "--external-id", "joe", "--consent", "form-9"]
    assert cli(second_name) == 0
    capsys.readouterr()
    assert cli(["erase", "joe", "--collection", collection]) == 0
    erased, proof = _out(capsys).splitlines()
    assert erased == f"erased joe from {collection}: 1 face(s), 0 photo(s), no user"
    assert proof.startswith("proof: not run: ")

    # Erased under a second name, Biden is still enrolled under his own: the proof names those faces and
    # the exit status says the person is not gone.
    assert cli(second_name) == 0
    capsys.readouterr()
    assert cli(["faces", "list", "--collection", collection, "--json"]) == 0
    faces = json.loads(_out(capsys))["Faces"]
    enrolled_as_biden = {face["FaceId"] for face in faces if face.get("ExternalImageId") == "biden"}
    assert cli(["erase", "joe", "--collection", collection, "--photo", biden]) == 1
    erased, proof = _out(capsys).splitlines()
    assert erased == f"erased joe from {collection}: 1 face(s), 0 photo(s), no user"
    assert proof.startswith("proof: FAILED, their photo still matches ")
    still_found = set(proof.removeprefix("proof: FAILED, their photo still matches ").split(", "))
    assert still_found and still_found <= enrolled_as_biden

    assert cli(["erase", "biden", "--collection", collection, "--photo", biden, "--json"]) == 0
    response = json.loads(_out(capsys))
    assert response["FacesRemoved"] == response["PhotosRemoved"] == len(enrolled_as_biden)
    assert response["UserRemoved"] is False
    assert response["Proof"]["Searched"] is True and response["Proof"]["RemainingMatches"] == []

    assert cli(["erase", "nobody-here", "--collection", collection]) == 1
    assert "ResourceNotFoundException" in capsys.readouterr().err
