"""Rekognition's stream-processor operations on Candor's processors (candor/live_processors.py):
CreateStreamProcessor, StartStreamProcessor, StopStreamProcessor, DescribeStreamProcessor,
ListStreamProcessors, UpdateStreamProcessor, DeleteStreamProcessor. LiveFunction analyses the frames.
Requests conform to botocore's model before they arrive here (protocol.py)."""

from __future__ import annotations

import base64
import binascii
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from candor.core.errors import InvalidPaginationTokenError, InvalidParameterError
from candor.live.processors import StreamProcessor, video_stream_name
from candor.live_processors import StreamProcessors

if TYPE_CHECKING:
    from rekognition import FaceApi

DEFAULT_PROCESSOR_PAGE = 1000


def create_stream_processor(api: FaceApi, request: dict[str, Any]) -> dict[str, Any]:
    """Face search processors only (Settings.FaceSearch); the caller's purpose and case are the processor's
    for every run, checked against the collection's rules now and at every start."""
    face_search = request["Settings"].get("FaceSearch")
    if not face_search or not face_search.get("CollectionId"):
        raise InvalidParameterError("Candor's stream processors search faces: Settings.FaceSearch.CollectionId")
    output = request["Output"].get("KinesisDataStream")
    if not output:
        raise InvalidParameterError("Output.KinesisDataStream.Arn is required (Candor writes no S3Destination)")
    input_arn = request["Input"]["KinesisVideoStream"]["Arn"]
    video_stream_name(input_arn)  # refuses what is not a video stream's ARN
    now = datetime.now(UTC).isoformat()
    caller = api.caller
    processor = StreamProcessor(
        name=request["Name"],
        arn=f"arn:aws:rekognition:{api.region}:{api.account_id}:streamprocessor/{request['Name']}",
        input_stream_arn=input_arn,
        output_stream_arn=output["Arn"],
        role_arn=request["RoleArn"],
        collection_id=face_search["CollectionId"],
        threshold=float(face_search["FaceMatchThreshold"]) if "FaceMatchThreshold" in face_search else None,
        created_at=now,
        updated_at=now,
        caller_identity=caller.identity,
        purpose=caller.purpose,
        case_reference=caller.case_reference,
        notification_topic_arn=(request.get("NotificationChannel") or {}).get("SNSTopicArn"),
        kms_key_id=request.get("KmsKeyId"),
        regions_of_interest=request.get("RegionsOfInterest"),
        data_sharing_opt_in=(request.get("DataSharingPreference") or {}).get("OptIn"),
    )
    return {"StreamProcessorArn": _streams(api).create(processor).arn}


def start_stream_processor(api: FaceApi, request: dict[str, Any]) -> dict[str, Any]:
    if request.get("StartSelector"):
        # Frames arrive live on LiveFrameStream; there is no stored Kinesis Video fragment to start from.
        raise InvalidParameterError("StartSelector is not supported: a processor reads its frames as they arrive")
    stop = request.get("StopSelector") or {}
    duration = int(stop["MaxDurationInSeconds"]) if "MaxDurationInSeconds" in stop else None
    return {"SessionId": _streams(api).start(request["Name"], duration).session_id}


def stop_stream_processor(api: FaceApi, request: dict[str, Any]) -> dict[str, Any]:
    _streams(api).stop(request["Name"])
    return {}


def describe_stream_processor(api: FaceApi, request: dict[str, Any]) -> dict[str, Any]:
    processor = _streams(api).get(request["Name"])
    response: dict[str, Any] = {
        "Name": processor.name,
        "StreamProcessorArn": processor.arn,
        "Status": processor.status.value,
        "CreationTimestamp": datetime.fromisoformat(processor.created_at).timestamp(),
        "LastUpdateTimestamp": datetime.fromisoformat(processor.updated_at).timestamp(),
        "Input": {"KinesisVideoStream": {"Arn": processor.input_stream_arn}},
        "Output": {"KinesisDataStream": {"Arn": processor.output_stream_arn}},
        "RoleArn": processor.role_arn,
        "Settings": {"FaceSearch": {"CollectionId": processor.collection_id}},
    }
    if processor.threshold is not None:
        response["Settings"]["FaceSearch"]["FaceMatchThreshold"] = processor.threshold
    if processor.status_message:
        response["StatusMessage"] = processor.status_message
    if processor.notification_topic_arn:
        response["NotificationChannel"] = {"SNSTopicArn": processor.notification_topic_arn}
    if processor.kms_key_id:
        response["KmsKeyId"] = processor.kms_key_id
    if processor.regions_of_interest:
        response["RegionsOfInterest"] = processor.regions_of_interest
    if processor.data_sharing_opt_in is not None:
        response["DataSharingPreference"] = {"OptIn": processor.data_sharing_opt_in}
    return response


def list_stream_processors(api: FaceApi, request: dict[str, Any]) -> dict[str, Any]:
    after = _after(request["NextToken"]) if request.get("NextToken") else None
    processors, last = _streams(api).processors.list(after, int(request.get("MaxResults", DEFAULT_PROCESSOR_PAGE)))
    response: dict[str, Any] = {
        "StreamProcessors": [{"Name": p.name, "Status": p.status.value} for p in processors],
    }
    if last:
        response["NextToken"] = base64.urlsafe_b64encode(f"processors|{last}".encode()).decode()
    return response


def update_stream_processor(api: FaceApi, request: dict[str, Any]) -> dict[str, Any]:
    if request.get("SettingsForUpdate"):
        raise InvalidParameterError("SettingsForUpdate changes ConnectedHome processors; Candor's search faces")
    sharing = request.get("DataSharingPreferenceForUpdate")
    _streams(api).update(
        request["Name"],
        request.get("RegionsOfInterestForUpdate"),
        sharing.get("OptIn") if sharing else None,
        request.get("ParametersToDelete") or [],
    )
    return {}


def delete_stream_processor(api: FaceApi, request: dict[str, Any]) -> dict[str, Any]:
    _streams(api).delete(request["Name"])
    return {}


def _after(token: str) -> str:
    try:
        kind, _, name = base64.urlsafe_b64decode(token.encode()).decode().partition("|")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        kind, name = "", ""
    if kind != "processors" or not name:
        raise InvalidPaginationTokenError("NextToken is not one ListStreamProcessors returned")
    return name


def _streams(api: FaceApi) -> StreamProcessors:
    if api.streams is None:
        raise RuntimeError("this face API was built without stream processors (STREAM_PROCESSORS_TABLE)")
    return api.streams
