"""`candor dlq list|explain|redrive`: the messages the pipeline gave up on, why, and sending them back.

Which queue dead-letters into which comes from template.yaml (each queue's RedrivePolicy); the physical
queues and tables from the deployed stack. SQS cannot attach an error to a message, so the error a dead
letter died of is read from the functions' logs: the handlers log every failed record with its message id,
which SQS keeps when it moves a message to the dead-letter queue. Locally the logs are the runtime's log
folder (`--logs`, by default the latest `candor-logs-*` folder, where `candor up` writes); on AWS, search
the function's log group for the message id (CloudWatch Logs Insights: `filter message_id = "<id>"`).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
from botocore.exceptions import ClientError

from candor.adapters.s3_events import photo_refs_from_notification
from candor.core.enrolment import photo_id_for
from candor.core.errors import MalformedEventError
from candor_local.cli import connection
from candor_local.emulator.template import DEFAULT_TEMPLATE_PATH, load_yaml

# A peeked message stays hidden this long, then is made visible again at once (visibility 0).
_PEEK_VISIBILITY_S = 30
_SQS_BATCH = 10


@dataclass(frozen=True)
class RedriveRoute:
    """A queue and the dead-letter queue its RedrivePolicy names (logical ids and physical URLs)."""

    source: str
    dead_letter: str
    source_url: str
    dead_letter_url: str


@dataclass
class DeadLetter:
    queue: str  # the dead-letter queue's logical id
    source: str  # the queue it came from
    message_id: str
    receive_count: int
    sent_at: str
    body: str
    photo_ids: list[str] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)
    photo_records: list[dict[str, Any]] = field(default_factory=list)
    last_error: str | None = None
    note: str | None = None


def redrive_routes(resources: Mapping[str, str], template_path: Path = DEFAULT_TEMPLATE_PATH) -> list[RedriveRoute]:
    """Every queue of the template with a RedrivePolicy, resolved to the deployed queue URLs."""
    routes = []
    for logical_id, resource in load_yaml(Path(template_path))["Resources"].items():
        policy = resource.get("Properties", {}).get("RedrivePolicy")
        if resource.get("Type") != "AWS::SQS::Queue" or not policy:
            continue
        target = policy["deadLetterTargetArn"]["Fn::GetAtt"]
        dead_letter = target[0] if isinstance(target, list) else str(target).split(".")[0]
        routes.append(RedriveRoute(logical_id, dead_letter, resources[logical_id], resources[dead_letter]))
    return routes


class DeadLetters:
    """Reads, explains and redrives the dead letters of a deployed stack."""

    def __init__(
        self,
        session: boto3.session.Session,
        endpoint_url: str | None,
        resources: Mapping[str, str],
        log_dir: Path | None = None,
        template_path: Path = DEFAULT_TEMPLATE_PATH,
    ) -> None:
        self._sqs: Any = session.client("sqs", endpoint_url=endpoint_url)
        self._photos = session.resource("dynamodb", endpoint_url=endpoint_url).Table(resources["PhotosTable"])
        self.routes = redrive_routes(resources, template_path)
        self._log_dir = log_dir

    def list_letters(self, queue: str | None = None) -> list[DeadLetter]:
        """Every message in the dead-letter queues (or the one named), left in place."""
        letters = []
        for route in self._routes(queue):
            for message in self._peek(route.dead_letter_url):
                attributes = message.get("Attributes", {})
                letters.append(
                    DeadLetter(
                        queue=route.dead_letter,
                        source=route.source,
                        message_id=message["MessageId"],
                        # SQS counts receives across the move, so this is how often the pipeline tried it (and
                        # this peek, and earlier ones).
                        receive_count=int(attributes.get("ApproximateReceiveCount", 0)),
                        sent_at=str(attributes.get("SentTimestamp", "")),
                        body=message.get("Body", ""),
                    )
                )
        return letters

    def explain(self, queue: str | None = None) -> list[DeadLetter]:
        """list_letters(), plus for each dead letter its photo(s), their records, and the error it was failed with."""
        letters = self.list_letters(queue)
        errors = self._logged_errors({letter.message_id for letter in letters})
        for letter in letters:
            self._describe_photos(letter)
            letter.last_error = errors.get(letter.message_id)
        return letters

    def redrive(self, queue: str | None = None) -> dict[str, int]:
        """Move every dead letter back to the queue it came from; returns how many moved per dead-letter queue
        (-1: SQS moves them asynchronously, through a message move task)."""
        moved = {}
        for route in self._routes(queue):
            count = self._start_move_task(route)
            moved[route.dead_letter] = self._move_by_hand(route) if count is None else count
        return moved

    # ---------------------------------------------------------------------------------------------- details

    def _routes(self, queue: str | None) -> list[RedriveRoute]:
        if queue is None:
            return self.routes
        chosen = [route for route in self.routes if queue in (route.source, route.dead_letter)]
        if not chosen:
            names = ", ".join(route.dead_letter for route in self.routes)
            raise ValueError(f"no dead-letter queue {queue!r}; the template has {names}")
        return chosen

    def _peek(self, url: str) -> list[dict[str, Any]]:
        seen: dict[str, dict[str, Any]] = {}
        while True:
            received = self._sqs.receive_message(
                QueueUrl=url,
                MaxNumberOfMessages=_SQS_BATCH,
                VisibilityTimeout=_PEEK_VISIBILITY_S,
                WaitTimeSeconds=0,
                MessageSystemAttributeNames=["All"],
                MessageAttributeNames=["All"],
            ).get("Messages", [])
            fresh = [m for m in received if m["MessageId"] not in seen]
            if not fresh:
                break
            seen.update((m["MessageId"], m) for m in fresh)
        for message in seen.values():
            self._sqs.change_message_visibility(
                QueueUrl=url, ReceiptHandle=message["ReceiptHandle"], VisibilityTimeout=0
            )
        return list(seen.values())

    def _describe_photos(self, letter: DeadLetter) -> None:
        try:
            if letter.source == "DetectQueue" or '"Records"' in letter.body or "s3:TestEvent" in letter.body:
                refs = photo_refs_from_notification(letter.body)
                letter.keys = [f"s3://{ref.bucket}/{ref.key}" for ref in refs]
                letter.photo_ids = [ref.photo_id for ref in refs]
            else:
                request = json.loads(letter.body)
                letter.keys = [f"s3://{request['bucket']}/{request['key']}"]
                letter.photo_ids = [request.get("photo_id") or photo_id_for(request["bucket"], request["key"])]
        except (MalformedEventError, ValueError, KeyError, TypeError) as error:
            letter.note = f"the message names no photo ({error})"
            return
        for photo_id in letter.photo_ids:
            item = self._photos.get_item(Key={"photo_id": photo_id}, ConsistentRead=True).get("Item")
            if item:
                letter.photo_records.append(
                    {name: item.get(name) for name in ("photo_id", "key", "status", "error_code", "error_message")}
                )

    def _logged_errors(self, message_ids: set[str]) -> dict[str, str]:
        """message id -> the last error a handler logged for it (Powertools JSON lines in the log folder)."""
        errors: dict[str, str] = {}
        if not message_ids or self._log_dir is None or not self._log_dir.is_dir():
            return errors
        for path in sorted(self._log_dir.glob("*.log")):
            for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
                if not line.startswith("{") or '"message_id"' not in line:
                    continue
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if entry.get("message_id") in message_ids and entry.get("exception_name"):
                    last_line = str(entry.get("exception", "")).strip().splitlines()[-1:] or [""]
                    errors[entry["message_id"]] = f"{path.stem}: {last_line[0]}"
        return errors

    def _start_move_task(self, route: RedriveRoute) -> int | None:
        """SQS's own redrive (StartMessageMoveTask); None where the endpoint does not offer it (moto)."""
        try:
            source_arn = self._arn(route.source_url)
            dead_letter_arn = self._arn(route.dead_letter_url)
            count = self._count(route.dead_letter_url)
            if count == 0:
                return 0
            self._sqs.start_message_move_task(SourceArn=dead_letter_arn, DestinationArn=source_arn)
        except ClientError as error:
            code = error.response.get("Error", {}).get("Code", "")
            if code in ("AccessDenied", "AccessDeniedException"):
                raise
            return None
        return -1

    def _move_by_hand(self, route: RedriveRoute) -> int:
        """Receive, send to the source queue, then delete: a crash in between duplicates a message (harmless:
        the pipeline is idempotent) but never loses one."""
        moved = 0
        while True:
            messages = self._sqs.receive_message(
                QueueUrl=route.dead_letter_url,
                MaxNumberOfMessages=_SQS_BATCH,
                VisibilityTimeout=_PEEK_VISIBILITY_S,
                WaitTimeSeconds=0,
                MessageAttributeNames=["All"],
            ).get("Messages", [])
            if not messages:
                return moved
            for message in messages:
                params: dict[str, Any] = {"QueueUrl": route.source_url, "MessageBody": message["Body"]}
                if message.get("MessageAttributes"):
                    params["MessageAttributes"] = message["MessageAttributes"]
                self._sqs.send_message(**params)
                self._sqs.delete_message(QueueUrl=route.dead_letter_url, ReceiptHandle=message["ReceiptHandle"])
                moved += 1

    def _arn(self, url: str) -> str:
        return str(self._sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"])

    def _count(self, url: str) -> int:
        attributes = self._sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages"])
        return int(attributes["Attributes"]["ApproximateNumberOfMessages"])


# ------------------------------------------------------------------------------------------------------ CLI


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Adds `dlq` with its actions to the CLI's subcommands."""
    parser = subparsers.add_parser("dlq", help="list, explain and redrive the messages the pipeline gave up on")
    actions = parser.add_subparsers(title="actions", required=True)
    for name, help_text in (
        ("list", "one line per dead letter: queue, message id, receive count, photo"),
        ("explain", "each dead letter's photo, its record's status and error, and the error logged for it"),
        ("redrive", "move the dead letters back to the queue they came from"),
    ):
        action = actions.add_parser(name, help=help_text)
        action.add_argument("--queue", help="one queue (logical id, e.g. EmbedDeadLetterQueue); default: all")
        action.add_argument("--stack-name", default=os.environ.get("CANDOR_STACK", "candor"))
        action.add_argument(
            "--logs",
            type=Path,
            default=os.environ.get("CANDOR_LOG_DIR"),
            help="the local runtime's log folder (default: the latest one, candor-logs-* in the temp folder)",
        )
        action.add_argument("--json", action="store_true", help="JSON instead of text")
        action.set_defaults(run=_run, action=name)
    return parser


def _run(args: argparse.Namespace) -> int:
    dead_letters = _connect(args.stack_name, args.logs)
    if args.action == "redrive":
        moved = dead_letters.redrive(args.queue)
        if args.json:
            print(json.dumps(moved))
        for queue, count in moved.items():
            if not args.json:
                source = next(route.source for route in dead_letters.routes if route.dead_letter == queue)
                what = "a move task was started" if count < 0 else f"{count} message(s) moved"
                print(f"{queue} -> {source}: {what}")
        return 0
    letters = dead_letters.explain(args.queue) if args.action == "explain" else dead_letters.list_letters(args.queue)
    if args.json:
        for letter in letters:
            print(json.dumps(letter.__dict__, default=str))
        return 0
    if not letters:
        print("no dead letters")
    for letter in letters:
        print(format_letter(letter, detailed=args.action == "explain"))
    return 0


def format_letter(letter: DeadLetter, detailed: bool) -> str:
    photos = ", ".join(letter.keys) or "(no photo)"
    if not detailed:
        return f"{letter.queue}  {letter.message_id}  received {letter.receive_count}x  {photos}"
    lines = [f"{letter.queue} (from {letter.source}) message {letter.message_id}, received {letter.receive_count}x"]
    lines.append(f"  photo: {photos}")
    if letter.note:
        lines.append(f"  note: {letter.note}")
    for record in letter.photo_records:
        error = f" {record['error_code']}: {record['error_message']}" if record.get("error_code") else ""
        lines.append(f"  record {record['photo_id']}: {record['status']}{error}")
    if letter.photo_ids and not letter.photo_records:
        lines.append("  record: none (the photo never got past this stage)")
    lines.append(f"  error: {letter.last_error or 'none logged (a crash or timeout, or logs not given: --logs)'}")
    return "\n".join(lines)


def _connect(stack_name: str, log_dir: Path | None) -> DeadLetters:
    """The stack on AWS_ENDPOINT_URL, or the one `candor up` runs, or AWS itself."""
    session, endpoint = connection.stack_session()
    cloudformation = session.client("cloudformation", endpoint_url=endpoint)
    resources = connection.physical_ids(cloudformation, stack_name)
    return DeadLetters(session, endpoint, resources, Path(log_dir) if log_dir else _latest_log_dir())


def _latest_log_dir() -> Path | None:
    """The log folder of the most recent local runtime (`candor up` logs to a fresh temporary folder)."""
    folders = sorted(Path(tempfile.gettempdir()).glob("candor-logs-*"), key=lambda path: path.stat().st_mtime)
    return folders[-1] if folders else None
