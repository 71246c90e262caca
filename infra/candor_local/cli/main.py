"""`candor`: run the embedded stack, enrol photos, search with a photo, and the end-to-end demo."""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import signal
import sys
import threading
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from botocore.exceptions import EndpointConnectionError
from tqdm import tqdm

from candor.core.settings import DEFAULT_FACE_MATCH_THRESHOLD
from candor_local.cli import audit, bench, connection, dlq, face_api, live, migrate, video
from candor_local.cli.client import CandorClient, CandorError, client_for

# `candor up` keeps each stack's state in a folder of its own here (--data moves it, --ephemeral keeps none).
DEFAULT_DATA_ROOT = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "candor" / "data"
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff"}
DEMO_COLLECTION = "demo"


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "run"):
        parser.print_help()
        return 2
    try:
        return int(args.run(args) or 0)
    except (CandorError, FileNotFoundError, TimeoutError, ValueError, KeyError, RuntimeError) as error:
        print(f"candor: {error}", file=sys.stderr)
        return 1
    except EndpointConnectionError as error:
        print(f"candor: {error}; is `candor up` still running?", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="candor", description=__doc__)
    commands = parser.add_subparsers(title="commands")

    setup = commands.add_parser("setup", help="fetch, convert and verify the models and sample photos")
    setup.add_argument("--force", action="store_true", help="fetch and convert again even if cached")
    setup.set_defaults(run=cmd_setup)

    up = commands.add_parser(
        "up",
        help="start the stack from template.yaml and run every function until Ctrl-C",
        description="Starts moto server, deploys template.yaml on it and runs every function. The stack's state "
        "(collections, photos, faces, users, the audit log and its digests) is kept in a data directory and "
        "comes back after Ctrl-C, a kill or a reboot; messages in flight at a kill are redone on restart. It prints "
        "AWS_ENDPOINT_URL, CANDOR_API, then the policy administration's URL and key (CANDOR_ADMIN_API, "
        "CANDOR_ADMIN_ACCESS_KEY_ID, CANDOR_ADMIN_SECRET_ACCESS_KEY), kept with the state.",
    )
    _stack_options(up)
    up.add_argument(
        "--data",
        type=Path,
        help=f"where the state is kept (default: {DEFAULT_DATA_ROOT}/<stack name>)",
    )
    up.add_argument("--ephemeral", action="store_true", help="keep nothing: start empty, forget everything at the end")
    up.set_defaults(run=cmd_up)

    demo = commands.add_parser("demo", help="start the embedded stack, enrol photos, search, print what was found")
    demo.add_argument("--photos", type=Path, help="a labelled folder: enroll/<identity>/*, probe/* (default: samples)")
    demo.add_argument("--threshold", type=float, default=DEFAULT_FACE_MATCH_THRESHOLD, help="similarity 0-100")
    demo.add_argument("--json", action="store_true", help="one JSON object per probe photo")
    demo.add_argument(
        "--engine", choices=migrate.ENGINES, default="in-function", help="the demo collection's index engine"
    )
    _stack_options(demo)
    demo.set_defaults(run=cmd_demo)

    invoke = commands.add_parser(
        "invoke", help="invoke one function once with an event file, like `sam local invoke` without Docker"
    )
    invoke.add_argument("function", help="logical id in template.yaml, e.g. DetectFunction")
    invoke.add_argument("-e", "--event", type=Path, required=True, help="event JSON, e.g. events/detect-s3-upload.json")
    invoke.add_argument("--stack-name", default=os.environ.get("CANDOR_STACK", "candor"))
    invoke.set_defaults(run=cmd_invoke)

    enroll = commands.add_parser("enroll", help="enrol photos into a collection through the upload bucket")
    enroll.add_argument("path", type=Path, help="a folder of <person>/<photos>, or with --person a folder or photo")
    enroll.add_argument("--collection", required=True)
    enroll.add_argument("--person", help="everyone in PATH is this person")
    enroll.add_argument(
        "--consent",
        required=True,
        help="the enrolled people's consent reference (a form or record id), required: it is recorded with each "
        "enrolled face and in the audit log, and the pipeline indexes nobody without one",
    )
    enroll.add_argument("--json", action="store_true")
    enroll.set_defaults(run=cmd_enroll)

    search = commands.add_parser("search", help="who is in this photo?")
    search.add_argument("photo", type=Path)
    search.add_argument("--collection", required=True)
    search.add_argument("--threshold", type=float, help=face_api.SEARCH_THRESHOLD_HELP)
    search.add_argument("--max-matches", type=int, default=5)
    search.add_argument(
        "--purpose",
        default=os.environ.get("CANDOR_PURPOSE"),
        help="what the search is for, as the collection declares it ($CANDOR_PURPOSE; default general)",
    )
    search.add_argument(
        "--case",
        default=os.environ.get("CANDOR_CASE"),
        help="the case reference, required for every purpose but general ($CANDOR_CASE)",
    )
    search.add_argument("--json", action="store_true")
    search.set_defaults(run=cmd_search)
    bench.register(commands)
    face_api.register(commands)
    dlq.register(commands)
    audit.register(commands)
    migrate.register(commands)
    video.register(commands)
    live.register(commands)
    return parser


def _stack_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--stack-name", default=os.environ.get("CANDOR_STACK", "candor"))
    parser.add_argument("--api-port", type=int, default=0, help="port for the face API (default: a free one)")
    parser.add_argument("--verbose", action="store_true", help="print the functions' JSON logs")


# --- commands -------------------------------------------------------------------------------------------


def cmd_setup(args: argparse.Namespace) -> int:
    from candor_local.packaging.models import ensure_models

    ensure_models(force=args.force)
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    data_dir = None if args.ephemeral else (args.data or DEFAULT_DATA_ROOT / args.stack_name).expanduser()
    if data_dir is not None:
        # The same ports as last time, so CANDOR_API and CANDOR_ADMIN_API in the user's shell stay right.
        saved = _saved_endpoint(data_dir)
        args.api_port = args.api_port or int(saved.get("api_port", 0))
        args.admin_port = int(saved.get("admin_port", 0))
    with _local_stack(args, data_dir) as (client, restored):
        stack = client.stack
        connection.save_state(stack)
        if data_dir is not None:
            _save_ports(data_dir, stack.api_url, stack.admin_api_url)
        # These two lines first and as they are: other tools read them.
        print(f"AWS_ENDPOINT_URL={stack.endpoint_url or ''}")
        print(f"CANDOR_API={stack.api_url.rstrip('/')}")
        if stack.admin_api_url:
            print(f"CANDOR_ADMIN_API={stack.admin_api_url.rstrip('/')}")
            print(f"CANDOR_ADMIN_ACCESS_KEY_ID={stack.admin_access_key_id}")
            print(f"CANDOR_ADMIN_SECRET_ACCESS_KEY={stack.admin_secret_access_key}")
        sys.stdout.flush()
        if data_dir is None:
            print("state: ephemeral (nothing is kept after Ctrl-C)", file=sys.stderr)
        elif restored:
            released = restored["messages_made_visible"]
            print(f"state: restored from {data_dir} ({released} message(s) in flight redone)", file=sys.stderr)
        else:
            print(f"state: kept in {data_dir}", file=sys.stderr)
        print(f"upload bucket: {stack.bucket}   (Ctrl-C stops the stack)", file=sys.stderr)
        stopped = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stopped.set())
        try:
            stopped.wait()
        except KeyboardInterrupt:
            pass
        finally:
            connection.STATE_FILE.unlink(missing_ok=True)
    return 0


def cmd_invoke(args: argparse.Namespace) -> int:
    """Against the stack `candor up` runs (or AWS_ENDPOINT_URL's); with neither, an embedded one for the call."""
    from candor_local.emulator.runtime import LocalEnvironment
    from candor_local.packaging.models import ensure_models

    event = json.loads(args.event.read_text())
    endpoint = os.environ.get("AWS_ENDPOINT_URL")
    if endpoint is None and connection.STATE_FILE.is_file():
        endpoint = json.loads(connection.STATE_FILE.read_text()).get("endpoint_url")
    environment = LocalEnvironment.attach(args.stack_name, endpoint)
    try:
        result = environment.invoke(args.function, event, ensure_models())
    finally:
        environment.stop()
    print(json.dumps(result, indent=2))
    return 0


def cmd_enroll(args: argparse.Namespace) -> int:
    client = CandorClient(connection.connected_stack())
    plan = _enrolment_plan(args.path, args.person)
    if client.ensure_collection(args.collection) and not args.json:
        print(f"created collection '{args.collection}'", file=sys.stderr)
    outcomes = enrol(client, args.collection, plan, args.consent, quiet=args.json)
    for outcome in outcomes:
        if args.json:
            print(json.dumps(outcome))
        else:
            mark = "enrolled" if outcome["status"] == "COMPLETE" else f"FAILED {outcome.get('error')}"
            print(f"{outcome['photo']}: {outcome['identity']} {mark}")
    return 0 if all(o["status"] == "COMPLETE" for o in outcomes) else 1


def cmd_search(args: argparse.Namespace) -> int:
    client = CandorClient(connection.connected_stack())
    client.state(purpose=args.purpose, case=args.case)
    result = search_photo(client, args.photo, args.collection, args.threshold, args.max_matches)
    print(json.dumps(result) if args.json else format_result(result))
    return 1 if result.get("error") else 0


def cmd_demo(args: argparse.Namespace) -> int:
    photos_dir = args.photos or _sample_photos()
    enrolment, probes, expected = _demo_photos(photos_dir, default_set=args.photos is None)
    with _local_stack(args) as (client, _):
        client.ensure_collection(DEMO_COLLECTION)
        if args.engine != "in-function":
            migrate.migrate_for_client(client, args.stack_name, DEMO_COLLECTION, args.engine, progress=lambda _: None)
        outcomes = enrol(client, DEMO_COLLECTION, enrolment, consent="candor-demo", quiet=args.json)
        if not args.json:
            enrolled = [o for o in outcomes if o["status"] == "COMPLETE"]
            print(f"Enrolled {len(enrolled)} of {len(outcomes)} photos into collection '{DEMO_COLLECTION}'.")
            for o in outcomes:
                if o["status"] != "COMPLETE":
                    print(f"  {o['photo']}: FAILED {o.get('error')}")
            print()
        as_expected = 0
        for probe in probes:
            result = search_photo(client, probe, DEMO_COLLECTION, args.threshold)
            found = {match["identity"] for face in result["faces"] for match in face["matches"][:1]}
            wanted = expected.get(probe.name)
            if args.json:
                print(json.dumps(result), flush=True)
            else:
                verdict = "" if wanted is None else ("  [as expected]" if found == wanted else "  [NOT as expected]")
                print(format_result(result) + verdict, flush=True)
            as_expected += wanted is not None and found == wanted
        if expected and not args.json:
            print(f"\n{as_expected} of {len(expected)} probe photos found exactly the expected people.")
    return 0


# --- the work behind the commands -----------------------------------------------------------------------


@dataclass(frozen=True)
class EnrolmentPhoto:
    identity: str
    path: Path


def enrol(
    client: CandorClient, collection_id: str, photos: list[EnrolmentPhoto], consent: str | None, quiet: bool = False
) -> list[dict[str, Any]]:
    """Upload each photo under enroll/<collection>/<identity>/ and wait until the pipeline has processed it."""
    keys = {}
    with tqdm(total=len(photos) * 2, desc="enrolling", unit="step", disable=quiet, file=sys.stderr) as bar:
        for photo in photos:
            keys[client.upload_enrolment(collection_id, photo.identity, photo.path, consent)] = photo
            bar.update()
        done = client.wait_for_photos(keys, on_done=lambda *_: bar.update())
    return [
        {
            "photo": str(photo.path),
            "identity": photo.identity,
            "status": done[key]["status"],
            "error": done[key].get("error_message"),
        }
        for key, photo in keys.items()
    ]


def search_photo(
    client: CandorClient, photo: Path, collection_id: str, threshold: float | None, max_matches: int = 5
) -> dict[str, Any]:
    """The demo's JSON shape: {"photo", "faces": [{"bounding_box", "matches": [{"identity", "similarity"}]}]}."""
    try:
        response = client.search_all_faces(photo.read_bytes(), collection_id, threshold, max_matches)
    except CandorError as error:
        return {"photo": photo.name, "faces": [], "error": str(error)}
    return {
        "photo": photo.name,
        # The chance that a searched face matches a stranger among the collection's faces, at this threshold.
        "false_match_risk": response.get("FalseMatchRisk"),
        "faces": [
            {
                "bounding_box": face["BoundingBox"],
                "confidence": face["Confidence"],
                "matches": [
                    {"identity": match["Face"].get("ExternalImageId"), "similarity": match["Similarity"]}
                    for match in face["FaceMatches"]
                ],
            }
            for face in response["Faces"]
        ],
    }


def format_result(result: dict[str, Any]) -> str:
    if result.get("error"):
        return f"{result['photo']}: {result['error']}"
    faces = result["faces"]
    risk = result.get("false_match_risk")
    stated = f" (chance of a stranger among a face's matches: {_percent(risk)})" if risk is not None else ""
    lines = [f"{result['photo']}: {len(faces)} face{'s' if len(faces) != 1 else ''}{stated}"]
    for number, face in enumerate(faces, 1):
        box = face["bounding_box"]
        where = f"at left {box['Left']:.2f} top {box['Top']:.2f} size {box['Width']:.2f}x{box['Height']:.2f}"
        best = face["matches"][0] if face["matches"] else None
        who = f"{best['identity']} (similarity {_similarity(best['similarity'])})" if best else "no match"
        lines.append(f"  face {number} {where}: {who}")
    return "\n".join(lines)


def _similarity(value: float) -> str:
    """One decimal below 99; above, the decimals that tell one in a million from one in a billion (rounded
    down: 99.9996 is not shown as 100)."""
    if value < 99:
        return f"{value:.1f}"
    return f"{math.floor(value * 1000) / 1000:.3f}"


def _percent(probability: float) -> str:
    """A small probability readably: 0.0012% rather than 1.2e-05."""
    if probability == 0:
        return "0%"
    if probability >= 0.001:
        return f"{probability:.1%}"
    return f"{probability * 100:.2g}%"


def _enrolment_plan(path: Path, person: str | None) -> list[EnrolmentPhoto]:
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    if person:
        files = [path] if path.is_file() else _images_in(path)
        return [EnrolmentPhoto(person, file) for file in files]
    plan = [
        EnrolmentPhoto(folder.name, file)
        for folder in sorted(path.iterdir())
        if folder.is_dir()
        for file in _images_in(folder)
    ]
    if not plan:
        raise ValueError(f"{path} has no <person>/<photo> folders; use --person to enrol a flat folder as one person")
    return plan


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _sample_photos() -> Path:
    from candor_local.packaging.models import SAMPLES_DIR

    if not SAMPLES_DIR.is_dir():
        raise FileNotFoundError(f"no sample photos in {SAMPLES_DIR}: run `bash scripts/setup.sh` first")
    return SAMPLES_DIR


def _demo_photos(folder: Path, default_set: bool) -> tuple[list[EnrolmentPhoto], list[Path], dict[str, set[str]]]:
    if default_set:
        # The face_recognition sample set: two portraits to enrol, the other photos (all of Obama) to search.
        enrolment = [EnrolmentPhoto("obama", folder / "obama.jpg"), EnrolmentPhoto("biden", folder / "biden.jpg")]
        probes = [p for p in _images_in(folder) if p.name not in ("obama.jpg", "biden.jpg")]
        return enrolment, probes, {p.name: {"obama"} for p in probes}
    enroll_dir, probe_dir = folder / "enroll", folder / "probe"
    if not enroll_dir.is_dir() or not probe_dir.is_dir():
        raise FileNotFoundError(f"{folder} must hold enroll/<identity>/* and probe/*")
    expected: dict[str, set[str]] = {}
    expected_csv = probe_dir / "expected.csv"
    if expected_csv.is_file():
        with expected_csv.open(newline="") as handle:
            for row in csv.DictReader(handle):
                expected[row["file"]] = {name for name in row["expected_identities"].split(";") if name}
    return _enrolment_plan(enroll_dir, None), _images_in(probe_dir), expected


@contextmanager
def _local_stack(
    args: argparse.Namespace, data_dir: Path | None = None
) -> Iterator[tuple[CandorClient, dict[str, int] | None]]:
    """The stack on the embedded endpoint, with what it restored from `data_dir` (None: it started empty)."""
    from candor_local.emulator.runtime import LocalEnvironment
    from candor_local.packaging.models import ensure_models

    model_dir = ensure_models()
    print("starting the stack from template.yaml ...", file=sys.stderr)
    with LocalEnvironment.start(
        stack_name=args.stack_name,
        model_dir=model_dir,
        api_port=args.api_port,
        admin_port=getattr(args, "admin_port", 0),
        echo_logs=args.verbose,
        data_dir=data_dir,
    ) as env:
        yield client_for(env), env.restored


def _saved_endpoint(data_dir: Path) -> dict[str, Any]:
    from candor_local.emulator.persistence import DurableState

    return DurableState(data_dir).saved_endpoint()


def _save_ports(data_dir: Path, api_url: str, admin_url: str | None) -> None:
    from candor_local.emulator.persistence import DurableState

    ports = {"api_port": urllib.parse.urlsplit(api_url).port}
    if admin_url:
        ports["admin_port"] = urllib.parse.urlsplit(admin_url).port
    DurableState(data_dir).save_endpoint(**{name: port for name, port in ports.items() if port})


if __name__ == "__main__":
    sys.exit(main())
