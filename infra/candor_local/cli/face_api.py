"""`candor collections|faces|users|compare|detect|show|erase`: every face API operation from the command line.

Each command talks to the stack `candor up` runs (or CANDOR_API / AWS_ENDPOINT_URL) through boto3's
Rekognition client, prints a short human summary, or with `--json` the API's response as it came.
Each states what the request is for with --purpose, --case and --consent (or CANDOR_PURPOSE, CANDOR_CASE,
CANDOR_CONSENT), sent as the X-Candor-* headers the API checks every search and enrolment against.
Creating a collection with a policy, changing a policy and deleting a collection go to the admin Function
URL with the admin's key (CANDOR_ADMIN_API, CANDOR_ADMIN_ACCESS_KEY_ID, CANDOR_ADMIN_SECRET_ACCESS_KEY, or
what `candor up` recorded); reading a policy stays on the face API.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import wraps
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError
from PIL import Image, ImageDraw, ImageFont, ImageOps
from tqdm import tqdm

from candor.accountability.policy import (
    DEFAULT_FLOOR,
    DEFAULT_IDENTIFICATION_MAX_RISK,
    DEFAULT_SEARCHES_PER_CALLER,
    DEFAULT_SEARCHES_PER_COLLECTION,
    GENERAL_PURPOSE,
)
from candor.core.settings import DEFAULT_FACE_MATCH_THRESHOLD
from candor_local.cli import connection
from candor_local.cli.client import CandorClient, CandorError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff"}
QUALITY_FILTERS = ("NONE", "AUTO", "LOW", "MEDIUM", "HIGH")
# A search without a threshold runs at its collection's floor, so an identification collection needs no flag.
SEARCH_THRESHOLD_HELP = "similarity 0-100 (default: the collection's floor, 80, or 99 for identification)"
Command = Callable[[argparse.Namespace, CandorClient], int | None]


def register(commands: argparse._SubParsersAction) -> None:
    """Add the face API's commands to `candor`'s subcommands."""
    _collections(commands.add_parser("collections", help="create, list, describe and delete collections"))
    _faces(commands.add_parser("faces", help="index, list, delete and search the faces of a collection"))
    _users(commands.add_parser("users", help="users: one person's faces, searched as one"))

    compare = commands.add_parser("compare", help="is the largest face of SOURCE among the faces of TARGET?")
    compare.add_argument("source", type=Path)
    compare.add_argument("target", type=Path)
    compare.add_argument("--threshold", type=float, default=DEFAULT_FACE_MATCH_THRESHOLD, help="similarity 80-100")
    _command(compare, cmd_compare)

    detect = commands.add_parser("detect", help="the faces in a photo: box, landmarks, pose, quality")
    detect.add_argument("photo", type=Path)
    _command(detect, cmd_detect)

    show = commands.add_parser("show", help="write a PNG of a photo with its faces boxed and named")
    show.add_argument("photo", type=Path)
    show.add_argument("--collection", help="name the faces found in this collection")
    show.add_argument("--threshold", type=float, help=SEARCH_THRESHOLD_HELP)
    show.add_argument("--out", type=Path, help="the PNG to write (default: <photo>.faces.png)")
    _command(show, cmd_show)

    erase = commands.add_parser(
        "erase", help="erase a person: their faces, user, enrolment photos and index entries, then prove it"
    )
    erase.add_argument("person", help="the ExternalImageId they were enrolled under, or their user id")
    erase.add_argument("--collection", required=True)
    erase.add_argument(
        "--photo", type=Path, help="a photo of the person to prove the erasure with (default: an enrolment photo)"
    )
    _command(erase, cmd_erase)


def _collections(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(title="actions", required=True)
    create = actions.add_parser("create", help="create a collection (with a policy when a policy flag is given)")
    create.add_argument("collection")
    _policy_options(create)
    _command(create, cmd_collection_create, stated_purpose=False)
    policy = actions.add_parser(
        "policy", help="what a collection may be searched for, its threshold floor and quotas; flags change them"
    )
    policy.add_argument("collection")
    _policy_options(policy)
    _command(policy, cmd_collection_policy, stated_purpose=False)
    for name, run, help_text in (
        ("describe", cmd_collection_describe, "face count, model version, ARN, creation time"),
        ("reindex", cmd_collection_reindex, "re-embed a collection's faces from their photos with this stack's model"),
        ("delete", cmd_collection_delete, "delete a collection with its faces and users"),
    ):
        action = actions.add_parser(name, help=help_text)
        action.add_argument("collection")
        if run is cmd_collection_reindex:
            action.add_argument(
                "--drop-unreindexable",
                action="store_true",
                help="delete the faces whose photo is not stored or unreadable, so the collection can switch",
            )
        _command(action, run)
    _command(actions.add_parser("list", help="every collection"), cmd_collection_list)


def _policy_options(parser: argparse.ArgumentParser) -> None:
    """A collection's policy; every flag left out keeps its current value (on create: the safe default)."""
    parser.add_argument(
        "--purpose",
        dest="purposes",
        action="append",
        metavar="PURPOSE",
        help=f"a purpose the collection may be searched for; repeat for several (default: {GENERAL_PURPOSE})",
    )
    parser.add_argument(
        "--identification",
        action=argparse.BooleanOptionalAction,
        help="matches are acted on to identify people: the threshold floor rises to 99",
    )
    parser.add_argument(
        "--min-threshold", type=float, help=f"the lowest match threshold searches may use ({DEFAULT_FLOOR:g}-100)"
    )
    parser.add_argument(
        "--searches-per-caller",
        type=int,
        help=f"searches a minute each caller may run (default {DEFAULT_SEARCHES_PER_CALLER})",
    )
    parser.add_argument(
        "--searches-per-minute",
        type=int,
        help=f"searches a minute all callers together may run (default {DEFAULT_SEARCHES_PER_COLLECTION})",
    )
    parser.add_argument(
        "--max-false-match-risk",
        type=_probability,
        metavar="RISK",
        help="the highest chance, e.g. 1%% or 0.01, that a searched face matches a stranger among the "
        f"collection's faces; searches at thresholds above it are refused "
        f"(identification default {DEFAULT_IDENTIFICATION_MAX_RISK:.0%})",
    )


def _risk_limit(policy: dict[str, Any]) -> str:
    if "MaxFalseMatchRisk" in policy:
        return f"at most {policy['MaxFalseMatchRisk']:.2%}"
    if policy["Identification"]:
        return f"at most {DEFAULT_IDENTIFICATION_MAX_RISK:.2%} (the identification default)"
    return "no limit"


def _probability(text: str) -> float:
    """A probability as a fraction (0.01) or a percentage (1%)."""
    try:
        value = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a probability (write 0.01 or 1%)") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be above 0 and at most 1 (100%)")
    return value


def _faces(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(title="actions", required=True)
    index = actions.add_parser("index", help="index the faces of photos (files, or folders of <person>/<photos>)")
    index.add_argument("paths", type=Path, nargs="+")
    index.add_argument("--collection", required=True)
    index.add_argument("--external-id", help="ExternalImageId of every photo (default: its folder name)")
    index.add_argument("--max-faces", type=int, help="index at most this many faces per photo, largest first")
    index.add_argument("--quality", choices=QUALITY_FILTERS, default="AUTO", help="quality filter (default AUTO)")
    _command(index, cmd_faces_index, consent_help="the consent reference of the people indexed (required)")

    listing = actions.add_parser("list", help="the faces of a collection")
    listing.add_argument("--collection", required=True)
    listing.add_argument("--user", help="only this user's faces")
    _command(listing, cmd_faces_list)

    delete = actions.add_parser("delete", help="delete faces by FaceId")
    delete.add_argument("face_ids", nargs="+")
    delete.add_argument("--collection", required=True)
    _command(delete, cmd_faces_delete)

    search = actions.add_parser("search", help="faces like FACE_ID, or like the largest face of --image")
    search.add_argument("face_id", nargs="?")
    search.add_argument("--image", type=Path)
    search.add_argument("--collection", required=True)
    search.add_argument("--threshold", type=float, help=SEARCH_THRESHOLD_HELP)
    search.add_argument("--max", type=int, default=5, help="at most this many matches")
    _command(search, cmd_faces_search)


def _users(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(title="actions", required=True)
    simple: tuple[tuple[str, Command, str], ...] = (
        ("create", cmd_user_create, "create a user"),
        ("delete", cmd_user_delete, "delete a user, erasing their faces, enrolment photos and index entries"),
    )
    for name, run, help_text in simple:
        action = actions.add_parser(name, help=help_text)
        action.add_argument("user")
        action.add_argument("--collection", required=True)
        _command(action, run)
    listing = actions.add_parser("list", help="the users of a collection")
    listing.add_argument("--collection", required=True)
    _command(listing, cmd_user_list)
    with_faces: tuple[tuple[str, Command], ...] = (
        ("associate", cmd_user_associate),
        ("disassociate", cmd_user_disassociate),
    )
    for name, run in with_faces:
        action = actions.add_parser(name, help=f"{name} faces with a user")
        action.add_argument("user")
        action.add_argument("face_ids", nargs="+")
        action.add_argument("--collection", required=True)
        _command(action, run)
    search = actions.add_parser("search", help="users like --user, --face or the largest face of --image")
    group = search.add_mutually_exclusive_group(required=True)
    group.add_argument("--user")
    group.add_argument("--face")
    group.add_argument("--image", type=Path)
    search.add_argument("--collection", required=True)
    search.add_argument("--threshold", type=float, help=SEARCH_THRESHOLD_HELP)
    search.add_argument("--max", type=int, default=10, help="at most this many users")
    _command(search, cmd_user_search)


def _command(
    parser: argparse.ArgumentParser,
    run: Command,
    *,
    stated_purpose: bool = True,
    consent_help: str = "the enrolled person's consent reference, for an enrolment",
) -> None:
    """The options every face API command shares: --json and what the request is stated to be for.
    Commands whose --purpose declares a collection's purposes (create, policy) state none."""
    parser.add_argument("--json", action="store_true", help="print the API's response as JSON")
    if stated_purpose:
        parser.add_argument(
            "--purpose",
            default=os.environ.get("CANDOR_PURPOSE"),
            help=f"what a search is for, as the collection declares it ($CANDOR_PURPOSE; default {GENERAL_PURPOSE})",
        )
    parser.add_argument(
        "--case",
        default=os.environ.get("CANDOR_CASE"),
        help="the case reference a search is made under, required for every purpose but general ($CANDOR_CASE)",
    )
    parser.add_argument("--consent", default=os.environ.get("CANDOR_CONSENT"), help=f"{consent_help} ($CANDOR_CONSENT)")
    parser.set_defaults(run=_connected(run))


def _connected(run: Command) -> Callable[[argparse.Namespace], int]:
    """Connect to the running stack, run the command, and turn the API's errors into `candor: ...` lines."""

    @wraps(run)
    def command(args: argparse.Namespace) -> int:
        client = CandorClient(connection.connected_stack())
        client.state(purpose=getattr(args, "purpose", None), case=args.case, consent=args.consent)
        try:
            result = run(args, client)
        except ClientError as error:
            details = error.response.get("Error", {})
            raise CandorError(details.get("Code", "Error"), details.get("Message", "")) from error
        return int(result or 0)

    return command


def _api(client: CandorClient) -> Any:
    """boto3's Rekognition client, its responses read as the plain dicts they are."""
    return client.rekognition


def _print(
    args: argparse.Namespace, response: Any, lines: Iterator[str] | list[str], write: Callable[[str], None] = print
) -> None:
    if args.json:
        response = (
            {k: v for k, v in response.items() if k != "ResponseMetadata"} if isinstance(response, dict) else response
        )
        write(json.dumps(response, default=str))
    else:
        for line in lines:
            write(line)


def _image(path: Path) -> dict[str, bytes]:
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    return {"Bytes": path.read_bytes()}


def _threshold(name: str, threshold: float | None) -> dict[str, float]:
    return {} if threshold is None else {name: threshold}


def _box(box: dict[str, float]) -> str:
    return f"left {box['Left']:.2f} top {box['Top']:.2f} size {box['Width']:.2f}x{box['Height']:.2f}"


# --- collections ------------------------------------------------------------------------------------------


def cmd_collection_create(args: argparse.Namespace, client: CandorClient) -> None:
    policy = _policy_flags(args)
    if not policy:
        response = _api(client).create_collection(CollectionId=args.collection)
        _print(args, response, [f"created {response['CollectionArn']}"])
        return
    # Rekognition's CreateCollection takes no policy: Candor's own operation does, on the admin URL.
    response = client.admin_call("CandorService.CreateCollection", {"CollectionId": args.collection, "Policy": policy})
    described = client.call("CandorService.DescribeCollectionPolicy", {"CollectionId": args.collection})
    _print(args, response, [f"created {response['CollectionArn']}", *_policy_lines(described["Policy"])])


def cmd_collection_policy(args: argparse.Namespace, client: CandorClient) -> None:
    current = client.call("CandorService.DescribeCollectionPolicy", {"CollectionId": args.collection})
    changes = _policy_flags(args)
    if not changes:
        _print(args, current, [f"{args.collection}:", *_policy_lines(current["Policy"]), *_pending_lines(current)])
        return
    # A policy is put whole: the flags change their fields, the others keep their current values.
    policy = {**current["Policy"], **changes}
    response = client.admin_call(
        "CandorService.PutCollectionPolicy", {"CollectionId": args.collection, "Policy": policy}
    )
    _print(
        args,
        response,
        [f"{args.collection}: policy changed", *_policy_lines(response["Policy"]), *_pending_lines(response)],
    )


def _policy_flags(args: argparse.Namespace) -> dict[str, Any]:
    """The Policy fields the command's flags give, in the API's names."""
    given = {
        "Purposes": list(dict.fromkeys(args.purposes)) if args.purposes else None,
        "Identification": args.identification,
        "MinFaceMatchThreshold": args.min_threshold,
        "SearchesPerCallerPerMinute": args.searches_per_caller,
        "SearchesPerMinute": args.searches_per_minute,
        "MaxFalseMatchRisk": args.max_false_match_risk,
    }
    return {name: value for name, value in given.items() if value is not None}


def _policy_lines(policy: dict[str, Any]) -> list[str]:
    use = "identification" if policy["Identification"] else "search only, no identification"
    return [
        f"  purposes: {', '.join(policy['Purposes'])}",
        f"  use: {use}; match threshold at least {policy['MinFaceMatchThreshold']:g}",
        f"  searches a minute: {policy['SearchesPerCallerPerMinute']} per caller, {policy['SearchesPerMinute']} in all",
        f"  false-match risk per searched face: {_risk_limit(policy)}",
    ]


def _pending_lines(response: dict[str, Any]) -> list[str]:
    """A loosening that waits for PolicyLooseningDelayHours: when it takes effect, and the policy it sets."""
    pending = response.get("PendingPolicy")
    if not pending:
        return []
    effective = datetime.fromtimestamp(float(pending["EffectiveAt"]), UTC).strftime("%Y-%m-%d %H:%M UTC")
    loosens = "; ".join(str(item) for item in pending.get("Loosens") or [])
    return [
        f"  pending, in force from {effective} (requested by {pending.get('RequestedBy')}): {loosens}",
        *(f"  {line}" for line in _policy_lines(pending["Policy"])),
    ]


def cmd_collection_describe(args: argparse.Namespace, client: CandorClient) -> None:
    response = _api(client).describe_collection(CollectionId=args.collection)
    _print(
        args,
        response,
        [
            f"{args.collection}: {response['FaceCount']} face(s), model {response['FaceModelVersion']}",
            f"  {response['CollectionARN']}, created {response['CreationTimestamp']}",
        ],
    )


def cmd_collection_reindex(args: argparse.Namespace, client: CandorClient) -> None:
    """Pages of CandorService.ReindexCollection until the collection is on this stack's face model."""
    request: dict[str, Any] = {"CollectionId": args.collection, "DropUnreindexable": args.drop_unreindexable}
    unreindexable: list[dict[str, Any]] = []
    reindexed = 0
    with tqdm(desc=f"re-indexing {args.collection}", unit="face", disable=args.json, file=sys.stderr) as bar:
        while True:
            response = client.call("CandorService.ReindexCollection", request)
            reindexed += response["Reindexed"]
            unreindexable += response["UnreindexableFaces"]
            bar.total = reindexed + response["Remaining"]
            bar.update(response["Reindexed"])
            if "NextToken" not in response:
                break
            request["NextToken"] = response["NextToken"]
    response = {**response, "Reindexed": reindexed, "UnreindexableFaces": unreindexable}
    lines = [f"{args.collection}: {reindexed} face(s) re-embedded, model {response['FaceModelVersion']}"]
    lines += [
        f"  cannot re-index {u['FaceId']} ({u.get('ExternalImageId') or 'no id'}): {u['Reason']}" for u in unreindexable
    ]
    if response["DroppedFaceIds"]:
        lines.append(f"  dropped {len(response['DroppedFaceIds'])} face(s) that could not be re-indexed")
    if not response["Complete"]:
        lines.append(
            f"  not switched: {response['Remaining']} face(s) are still on the old model; enrol them again or "
            "delete them, or run again with --drop-unreindexable"
        )
    _print(args, response, lines)
    if not response["Complete"]:
        raise SystemExit(1)


def cmd_collection_delete(args: argparse.Namespace, client: CandorClient) -> None:
    # Deleting a collection is policy administration: the admin URL, with the admin's credentials.
    response = client.admin_call("RekognitionService.DeleteCollection", {"CollectionId": args.collection})
    _print(args, response, [f"deleted {args.collection} with its faces and users"])


def cmd_collection_list(args: argparse.Namespace, client: CandorClient) -> None:
    ids = [i for page in _api(client).get_paginator("list_collections").paginate() for i in page["CollectionIds"]]
    _print(args, {"CollectionIds": ids}, ids or ["(no collections)"])


# --- faces --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PhotoToIndex:
    path: Path
    external_id: str | None


def photos_to_index(paths: list[Path], external_id: str | None) -> list[PhotoToIndex]:
    """Files as given; folders walked, each photo named after the folder it is in (<person>/<photo>)."""
    plan = []
    for path in paths:
        if path.is_file():
            plan.append(PhotoToIndex(path, external_id))
        elif path.is_dir():
            for photo in sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES):
                plan.append(PhotoToIndex(photo, external_id or photo.parent.name))
        else:
            raise FileNotFoundError(f"{path} does not exist")
    return plan


def cmd_faces_index(args: argparse.Namespace, client: CandorClient) -> int:
    if not args.consent:
        # Refused by the API anyway: say so once, before any photo is sent.
        raise ValueError(
            "indexing faces needs the consent reference of the people indexed: "
            "give --consent REFERENCE (or set CANDOR_CONSENT)"
        )
    plan = photos_to_index(args.paths, args.external_id)
    failed = 0
    bar = tqdm(plan, desc="indexing", unit="photo", disable=args.json or len(plan) < 2, file=sys.stderr)
    # Lines go through the bar, so they print above it instead of through it.
    write = bar.write if not bar.disable else print
    for photo in bar:
        request: dict[str, Any] = {"CollectionId": args.collection, "Image": _image(photo.path)}
        request["QualityFilter"] = args.quality
        if photo.external_id:
            request["ExternalImageId"] = photo.external_id
        if args.max_faces:
            request["MaxFaces"] = args.max_faces
        try:
            response = _api(client).index_faces(**request)
        except ClientError as error:
            # One bad photo of a bulk run is reported and the run goes on.
            failed += 1
            details = error.response.get("Error", {})
            outcome = {"photo": str(photo.path), "error": details.get("Code"), "message": details.get("Message")}
            _print(args, outcome, [f"{photo.path}: {outcome['error']}: {outcome['message']}"], write)
            continue
        faces = [record["Face"] for record in response["FaceRecords"]]
        lines = [f"{photo.path}: {len(faces)} face(s) indexed as {photo.external_id or '(no external id)'}"]
        lines += [f"  {face['FaceId']} at {_box(face['BoundingBox'])}" for face in faces]
        lines += [f"  not indexed: {', '.join(u['Reasons'])}" for u in response["UnindexedFaces"]]
        _print(args, {"photo": str(photo.path), **response}, lines, write)
    return 1 if failed else 0


def cmd_faces_list(args: argparse.Namespace, client: CandorClient) -> None:
    params: dict[str, Any] = {"CollectionId": args.collection}
    if args.user:
        params["UserId"] = args.user
    pages = _api(client).get_paginator("list_faces").paginate(**params)
    faces = [face for page in pages for face in page["Faces"]]
    lines = [
        f"{face['FaceId']}  {face.get('ExternalImageId', '-'):<20} user {face.get('UserId', '-')}" for face in faces
    ]
    _print(args, {"Faces": faces}, [*lines, f"{len(faces)} face(s)"])


def cmd_faces_delete(args: argparse.Namespace, client: CandorClient) -> int:
    response = _api(client).delete_faces(CollectionId=args.collection, FaceIds=args.face_ids)
    lines = [f"deleted {face_id}" for face_id in response["DeletedFaces"]]
    lines += [f"not deleted {u['FaceId']}: {', '.join(u['Reasons'])}" for u in response["UnsuccessfulFaceDeletions"]]
    _print(args, response, lines)
    return 1 if response["UnsuccessfulFaceDeletions"] else 0


def cmd_faces_search(args: argparse.Namespace, client: CandorClient) -> None:
    if (args.face_id is None) == (args.image is None):
        raise ValueError("give a FACE_ID or --image PHOTO")
    common = {"CollectionId": args.collection, "MaxFaces": args.max, **_threshold("FaceMatchThreshold", args.threshold)}
    if args.face_id:
        response = _api(client).search_faces(FaceId=args.face_id, **common)
    else:
        response = _api(client).search_faces_by_image(Image=_image(args.image), **common)
    lines = [
        f"{m['Face'].get('ExternalImageId', '-'):<20} similarity {m['Similarity']:.1f}  face {m['Face']['FaceId']}"
        for m in response["FaceMatches"]
    ]
    _print(args, response, lines or ["no match"])


# --- compare, detect, show ----------------------------------------------------------------------------------


def cmd_compare(args: argparse.Namespace, client: CandorClient) -> None:
    response = _api(client).compare_faces(
        SourceImage=_image(args.source), TargetImage=_image(args.target), SimilarityThreshold=args.threshold
    )
    lines = [
        f"{args.target.name}: face at {_box(m['Face']['BoundingBox'])} matches (similarity {m['Similarity']:.1f})"
        for m in response["FaceMatches"]
    ]
    lines += [
        f"{args.target.name}: face at {_box(face['BoundingBox'])} does not match" for face in response["UnmatchedFaces"]
    ]
    _print(args, response, lines or [f"{args.target.name}: no face"])


def cmd_detect(args: argparse.Namespace, client: CandorClient) -> None:
    response = _api(client).detect_faces(Image=_image(args.photo))
    lines = [f"{args.photo.name}: {len(response['FaceDetails'])} face(s)"]
    for number, face in enumerate(response["FaceDetails"], 1):
        pose, quality = face["Pose"], face["Quality"]
        lines.append(
            f"  face {number} at {_box(face['BoundingBox'])}: confidence {face['Confidence']:.1f}, "
            f"roll {pose['Roll']:.0f} yaw {pose['Yaw']:.0f} pitch {pose['Pitch']:.0f}, "
            f"brightness {quality['Brightness']:.0f} sharpness {quality['Sharpness']:.0f}"
        )
    _print(args, response, lines)


@dataclass(frozen=True)
class ShownFace:
    """A face to draw: box and landmarks as ratios of the upright image, and the label under the box."""

    box: dict[str, float]
    landmarks: list[tuple[float, float]]
    label: str
    matched: bool


def cmd_show(args: argparse.Namespace, client: CandorClient) -> None:
    data = _image(args.photo)
    if args.collection:
        response = client.search_all_faces(data["Bytes"], args.collection, args.threshold)
        faces = [_shown(face, face["FaceMatches"]) for face in response["Faces"]]
    else:
        response = _api(client).detect_faces(Image=data)
        faces = [_shown(face, None) for face in response["FaceDetails"]]
    out = args.out or args.photo.with_name(f"{args.photo.stem}.faces.png")
    with Image.open(args.photo) as photo:
        # The API's ratios are of the upright photo: turn it as its EXIF orientation says, as the API did.
        draw_faces(ImageOps.exif_transpose(photo).convert("RGB"), faces).save(out, "PNG")
    _print(args, {"photo": str(args.photo), "out": str(out), **response}, [f"wrote {out} ({len(faces)} face(s))"])


def _shown(face: dict[str, Any], matches: list[dict[str, Any]] | None) -> ShownFace:
    landmarks = [(point["X"], point["Y"]) for point in face.get("Landmarks", [])]
    if matches is None:
        return ShownFace(face["BoundingBox"], landmarks, f"{face['Confidence']:.0f}%", matched=True)
    if not matches:
        return ShownFace(face["BoundingBox"], landmarks, "no match", matched=False)
    best = matches[0]
    name = best["Face"].get("ExternalImageId") or best["Face"]["FaceId"][:8]
    return ShownFace(face["BoundingBox"], landmarks, f"{name} {best['Similarity']:.0f}", matched=True)


def draw_faces(image: Image.Image, faces: list[ShownFace]) -> Image.Image:
    """A copy of the image with each face's box, five landmarks and label; sizes follow the image's size."""
    canvas = image.copy()
    draw = ImageDraw.Draw(canvas)
    width, height = canvas.size
    line = max(2, round(max(width, height) / 300))
    font = ImageFont.load_default(size=max(12, round(max(width, height) / 40)))
    for face in faces:
        colour = (40, 220, 90) if face.matched else (255, 170, 0)
        left, top = face.box["Left"] * width, face.box["Top"] * height
        right, bottom = left + face.box["Width"] * width, top + face.box["Height"] * height
        draw.rectangle((left, top, right, bottom), outline=colour, width=line)
        radius = line * 1.5
        for x, y in face.landmarks:
            draw.ellipse(
                (x * width - radius, y * height - radius, x * width + radius, y * height + radius), fill=colour
            )
        # The label sits on a filled band just below the box (above it when the box touches the bottom).
        text_box = draw.textbbox((0, 0), face.label, font=font)
        text_w, text_h = text_box[2] - text_box[0], text_box[3] - text_box[1]
        band_top = bottom if bottom + text_h + 2 * line <= height else max(top - text_h - 2 * line, 0)
        draw.rectangle((left, band_top, left + text_w + 2 * line, band_top + text_h + 2 * line), fill=colour)
        draw.text((left + line, band_top + line - text_box[1]), face.label, fill=(0, 0, 0), font=font)
    return canvas


# --- users --------------------------------------------------------------------------------------------------


def cmd_user_create(args: argparse.Namespace, client: CandorClient) -> None:
    response = _api(client).create_user(CollectionId=args.collection, UserId=args.user)
    _print(args, response, [f"created user {args.user} in {args.collection}"])


def cmd_user_delete(args: argparse.Namespace, client: CandorClient) -> None:
    response = _api(client).delete_user(CollectionId=args.collection, UserId=args.user)
    _print(args, response, [f"deleted user {args.user} from {args.collection}, erased with their faces and photos"])


def cmd_user_list(args: argparse.Namespace, client: CandorClient) -> None:
    pages = _api(client).get_paginator("list_users").paginate(CollectionId=args.collection)
    users = [user for page in pages for user in page["Users"]]
    _print(args, {"Users": users}, [f"{u['UserId']}  {u['UserStatus']}" for u in users] or ["(no users)"])


def cmd_user_associate(args: argparse.Namespace, client: CandorClient) -> int:
    response = _api(client).associate_faces(CollectionId=args.collection, UserId=args.user, FaceIds=args.face_ids)
    lines = [f"associated {face['FaceId']} with {args.user}" for face in response["AssociatedFaces"]]
    lines += [
        f"not associated {u['FaceId']}: {', '.join(u['Reasons'])}" for u in response["UnsuccessfulFaceAssociations"]
    ]
    _print(args, response, lines)
    return 1 if response["UnsuccessfulFaceAssociations"] else 0


def cmd_user_disassociate(args: argparse.Namespace, client: CandorClient) -> int:
    response = _api(client).disassociate_faces(CollectionId=args.collection, UserId=args.user, FaceIds=args.face_ids)
    lines = [f"disassociated {face['FaceId']} from {args.user}" for face in response["DisassociatedFaces"]]
    lines += [
        f"not disassociated {u['FaceId']}: {', '.join(u['Reasons'])}"
        for u in response["UnsuccessfulFaceDisassociations"]
    ]
    _print(args, response, lines)
    return 1 if response["UnsuccessfulFaceDisassociations"] else 0


def cmd_user_search(args: argparse.Namespace, client: CandorClient) -> None:
    common = {"CollectionId": args.collection, "MaxUsers": args.max, **_threshold("UserMatchThreshold", args.threshold)}
    if args.image:
        response = _api(client).search_users_by_image(Image=_image(args.image), **common)
    elif args.user:
        response = _api(client).search_users(UserId=args.user, **common)
    else:
        response = _api(client).search_users(FaceId=args.face, **common)
    lines = [f"{m['User']['UserId']:<20} similarity {m['Similarity']:.1f}" for m in response["UserMatches"]]
    _print(args, response, lines or ["no user matches"])


# --- erasure ------------------------------------------------------------------------------------------------


def cmd_erase(args: argparse.Namespace, client: CandorClient) -> int:
    """ErasePerson, then what its proof search found: exit status 1 when a face of theirs still matches."""
    request: dict[str, Any] = {"CollectionId": args.collection, "PersonId": args.person}
    if args.photo is not None:
        request["Image"] = {"Bytes": base64.b64encode(_image(args.photo)["Bytes"]).decode()}
    response = client.call("CandorService.ErasePerson", request)
    proof = response["Proof"]
    user = "their user" if response["UserRemoved"] else "no user"
    lines = [
        f"erased {args.person} from {args.collection}: {response['FacesRemoved']} face(s), "
        f"{response['PhotosRemoved']} photo(s), {user}"
    ]
    if proof["RemainingMatches"]:
        lines.append(f"proof: FAILED, their photo still matches {', '.join(proof['RemainingMatches'])}")
    elif proof["Searched"]:
        lines.append(f"proof: searched with their photo, {proof['FacesSearched']} face(s), no match left")
    else:
        lines.append(f"proof: not run: {proof.get('Note', 'no photo to search with')}")
    _print(args, response, lines)
    return 1 if proof["RemainingMatches"] else 0
