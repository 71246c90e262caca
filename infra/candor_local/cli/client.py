"""What the CLI talks to: the upload bucket and tables on an AWS endpoint, and the face API.

The face API is spoken through boto3's own Rekognition client; Candor's own operations
(SearchAllFacesByImage, the policies) go over the same protocol, signed the same way (SigV4, as an
IAM-authorised Function URL requires, locally too). The policy administration (creating a collection with a
policy, changing a policy, deleting a collection) goes to the admin Function URL, signed with the admin's
credentials: locally the pair `candor up` prints, on AWS your own (PolicyAdminRole's).
"""

from __future__ import annotations

import base64
import json
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest

from candor.core.enrolment import META_CONSENT, photo_id_for
from candor.core.settings import ENROLL_PREFIX
from candor_local.emulator.moto_server import EMULATOR_CREDENTIALS

if TYPE_CHECKING:
    from candor_local.emulator.runtime import LocalEnvironment

FINAL_STATUSES = ("COMPLETE", "FAILED")


@dataclass(frozen=True)
class StackEndpoints:
    endpoint_url: str | None  # None: the real AWS endpoints
    api_url: str
    bucket: str
    photos_table: str
    region: str = "us-east-1"
    # The policy administration's Function URL, and the key it is signed with (None: the client's own).
    admin_api_url: str | None = None
    admin_access_key_id: str | None = None
    admin_secret_access_key: str | None = None
    # LiveFrameStream, where `candor live` puts frames (None: a state file or stack from before live streams).
    live_frame_stream: str | None = None


def deployed_stack(stack_name: str, endpoint_url: str | None = None) -> StackEndpoints:
    """A stack `sam deploy` made, from its CloudFormation outputs (AWS, or the endpoint given)."""
    session = boto3.session.Session()
    described = session.client("cloudformation", endpoint_url=endpoint_url).describe_stacks(StackName=stack_name)
    outputs = {o["OutputKey"]: o["OutputValue"] for o in described["Stacks"][0].get("Outputs", [])}
    missing = {"SearchFunctionUrl", "UploadBucketName", "PhotosTableName"} - outputs.keys()
    if missing:
        raise ValueError(f"stack {stack_name} has no output {', '.join(sorted(missing))}: is it Candor's?")
    return StackEndpoints(
        endpoint_url=endpoint_url,
        api_url=outputs["SearchFunctionUrl"],
        bucket=outputs["UploadBucketName"],
        photos_table=outputs["PhotosTableName"],
        region=session.region_name or "us-east-1",
        admin_api_url=outputs.get("AdminFunctionUrl"),
        live_frame_stream=outputs.get("LiveFrameStreamName"),
    )


def _sign_as_lambda(request: AWSRequest, **_: Any) -> None:
    request.context.setdefault("signing", {})["signing_name"] = "lambda"


def _is_loopback(url: str | None) -> bool:
    return bool(url) and urllib.parse.urlsplit(url).hostname in ("127.0.0.1", "localhost", "::1")


class CandorError(RuntimeError):
    """An error the face API returned, with Rekognition's exception name."""

    def __init__(self, error_type: str, message: str) -> None:
        super().__init__(f"{error_type}: {message}")
        self.error_type = error_type


class CandorClient:
    def __init__(self, stack: StackEndpoints, session: boto3.session.Session | None = None) -> None:
        self.stack = stack
        session = session or boto3.session.Session(region_name=stack.region)
        if session.get_credentials() is None and _is_loopback(stack.endpoint_url):
            # The embedded emulator accepts any key; AWS and LocalStack users bring their own.
            session = boto3.session.Session(
                aws_access_key_id=EMULATOR_CREDENTIALS["AWS_ACCESS_KEY_ID"],
                aws_secret_access_key=EMULATOR_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
                region_name=stack.region,
            )
        self._session = session
        self._uploads: dict[str, tuple[str, str]] = {}  # key -> (ETag, LastModified) of the latest upload
        self.s3 = session.client("s3", endpoint_url=stack.endpoint_url)
        self.photos = session.resource("dynamodb", endpoint_url=stack.endpoint_url).Table(stack.photos_table)
        self.rekognition = session.client("rekognition", endpoint_url=stack.api_url)
        # An IAM Function URL accepts SigV4 for the service "lambda" only, whatever protocol it speaks.
        self.rekognition.meta.events.register("before-sign.rekognition", _sign_as_lambda)
        # What the caller states with every request (purpose, case, consent): see `state`.
        self.statement: dict[str, str] = {}
        self.rekognition.meta.events.register("before-sign.rekognition", self._add_statement)

    @property
    def session(self) -> boto3.session.Session:
        """The session the client signs with (the emulator's credentials on a loopback endpoint)."""
        return self._session

    def state(self, purpose: str | None = None, case: str | None = None, consent: str | None = None) -> None:
        """Send X-Candor-Purpose, X-Candor-Case and X-Candor-Consent with every following request."""
        values = {"X-Candor-Purpose": purpose, "X-Candor-Case": case, "X-Candor-Consent": consent}
        self.statement = {name: value for name, value in values.items() if value}

    def _add_statement(self, request: AWSRequest, **_: Any) -> None:
        for name, value in self.statement.items():
            request.headers[name] = value

    def ensure_collection(self, collection_id: str) -> bool:
        """Create the collection unless it exists; True when it was created."""
        try:
            self.rekognition.create_collection(CollectionId=collection_id)
        except self.rekognition.exceptions.ResourceAlreadyExistsException:
            return False
        return True

    def upload_enrolment(self, collection_id: str, person: str, photo: Path, consent: str | None) -> str:
        key = f"{ENROLL_PREFIX}{collection_id}/{person}/{photo.name}"
        metadata = {META_CONSENT: consent} if consent else {}
        self.s3.put_object(Bucket=self.stack.bucket, Key=key, Body=photo.read_bytes(), Metadata=metadata)
        head = self.s3.head_object(Bucket=self.stack.bucket, Key=key)
        self._uploads[key] = (head["ETag"].strip('"'), head["LastModified"].isoformat())
        return key

    def photo_status(self, key: str) -> dict[str, Any] | None:
        """The photo's record, once it describes this client's latest upload of the key (not an earlier one)."""
        item = self.photos.get_item(Key={"photo_id": photo_id_for(self.stack.bucket, key)}, ConsistentRead=True)
        record = item.get("Item")
        if record is None or key not in self._uploads:
            return record
        etag, modified = self._uploads[key]
        current = record.get("source_etag") == etag and str(record.get("source_modified", "")) >= modified
        return record if current else None

    def wait_for_photos(
        self,
        keys: Iterable[str],
        timeout_s: float = 300.0,
        on_done: Callable[[str, dict[str, Any]], None] | None = None,
    ) -> dict[str, dict[str, Any]]:
        """Poll the photos table until every key is COMPLETE or FAILED."""
        pending = list(keys)
        done: dict[str, dict[str, Any]] = {}
        deadline = time.monotonic() + timeout_s
        while pending:
            for key in list(pending):
                item = self.photo_status(key)
                if item is not None and item.get("status") in FINAL_STATUSES:
                    done[key] = item
                    pending.remove(key)
                    if on_done:
                        on_done(key, item)
            if pending:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{len(pending)} photo(s) not processed after {timeout_s:.0f} s: {pending[:3]}")
                time.sleep(0.2)
        return done

    def search_all_faces(self, image: bytes, collection_id: str, threshold: float | None, max_matches: int = 5) -> dict:
        """SearchAllFacesByImage; without a threshold the collection's floor applies."""
        request: dict[str, Any] = {
            "CollectionId": collection_id,
            "Image": {"Bytes": base64.b64encode(image).decode()},
            "MaxFaces": max_matches,
        }
        if threshold is not None:
            request["FaceMatchThreshold"] = threshold
        return self.call("CandorService.SearchAllFacesByImage", request)

    def call(self, target: str, request: dict[str, Any]) -> dict[str, Any]:
        """One operation of the face API (`CandorService.SearchAllFacesByImage`, ...), signed with the client's
        credentials."""
        return self._post(self.stack.api_url, self._session, target, request)

    def admin_call(self, target: str, request: dict[str, Any]) -> dict[str, Any]:
        """One operation of the policy administration (`CandorService.PutCollectionPolicy`,
        `RekognitionService.DeleteCollection`, ...), on the admin URL with the admin's credentials."""
        if not self.stack.admin_api_url:
            raise CandorError(
                "AccessDeniedException",
                f"{target} is policy administration, and no admin Function URL is known: set CANDOR_ADMIN_API "
                "(AdminFunctionUrl), or restart `candor up`",
            )
        session = self._session
        if self.stack.admin_access_key_id and self.stack.admin_secret_access_key:
            session = boto3.session.Session(
                aws_access_key_id=self.stack.admin_access_key_id,
                aws_secret_access_key=self.stack.admin_secret_access_key,
                region_name=self.stack.region,
            )
        return self._post(self.stack.admin_api_url, session, target, request)

    def _post(self, url: str, session: boto3.session.Session, target: str, request: dict[str, Any]) -> dict[str, Any]:
        body = json.dumps(request).encode()
        headers = {"Content-Type": "application/x-amz-json-1.1", "X-Amz-Target": target, **self.statement}
        signed = AWSRequest(method="POST", url=url.rstrip("/") + "/", data=body, headers=headers)
        credentials = session.get_credentials()
        if credentials is not None:
            SigV4Auth(credentials.get_frozen_credentials(), "lambda", self.stack.region).add_auth(signed)
        http_request = urllib.request.Request(str(signed.url), data=body, headers=dict(signed.headers), method="POST")
        try:
            with urllib.request.urlopen(http_request, timeout=60) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as error:
            payload = json.loads(error.read() or b"{}")
            raise CandorError(payload.get("__type", f"HTTP {error.code}"), payload.get("Message", "")) from error


def client_for(env: LocalEnvironment) -> CandorClient:
    """A client of a running local environment (the CLI's demo, the benchmarks, the tests)."""
    stack = StackEndpoints(
        endpoint_url=env.endpoint_url,
        api_url=env.api_url,
        bucket=env.resources["UploadBucket"],
        photos_table=env.resources["PhotosTable"],
        region=env.region,
        live_frame_stream=env.resources.get("LiveFrameStream"),
    )
    if "AdminFunction" in env.function_urls:
        admin = env.admin_credentials
        stack = replace(
            stack,
            admin_api_url=env.admin_url,
            admin_access_key_id=admin.access_key_id,
            admin_secret_access_key=admin.secret_access_key,
        )
    return CandorClient(stack, env.session)
