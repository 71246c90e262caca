"""template.yaml: it lints clean, translates offline, and says what a reviewer would check by hand."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from candor_local.emulator.template import (
    DEFAULT_TEMPLATE_PATH,
    Template,
    load_template,
    load_yaml,
    referenced_resources,
)

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = ROOT / "template.yaml"
# The zip functions, with their code; VideoFunction is a container image (tests/test_image_functions.py).
FUNCTIONS = {
    "DetectFunction": "services/detect",
    "EmbedFunction": "services/embed",
    "SearchFunction": "services/search",
    "AdminFunction": "services/search",
    "DigestFunction": "services/digest",
    "LiveFunction": "services/live",
}
IMAGE_FUNCTIONS = {"VideoFunction"}


@pytest.fixture(scope="module")
def template() -> Template:
    return load_template(TEMPLATE)


def _resources(template: Template, resource_type: str) -> dict[str, dict[str, Any]]:
    return {name: r for name, r in template.resources.items() if r["Type"] == resource_type}


def _statements(document: dict[str, Any]) -> Iterator[dict[str, Any]]:
    statements = document.get("Statement", [])
    yield from statements if isinstance(statements, list) else [statements]


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def test_cfn_lint_reports_nothing() -> None:
    # In a process of its own: cfn-lint sets AWS_DEFAULT_REGION while it translates.
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from cfnlint.runner import main; sys.exit(main())",
            str(TEMPLATE),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_template_is_the_default_of_the_local_runtime() -> None:
    assert DEFAULT_TEMPLATE_PATH == TEMPLATE


def test_sam_translates_offline_into_the_functions_with_their_code_and_layers(template: Template) -> None:
    assert set(template.functions) == set(FUNCTIONS) | IMAGE_FUNCTIONS
    assert {name for name, function in template.functions.items() if function.is_image} == IMAGE_FUNCTIONS
    for logical_id, code in FUNCTIONS.items():
        function = template.functions[logical_id]
        assert function.runtime == "python3.12"
        assert function.code_dir == ROOT / code
        assert function.handler == "app.lambda_handler"
        assert function.layer_dirs == (ROOT / "layers/shared", ROOT / "layers/models")
        assert (ROOT / "layers/shared/python/candor/__init__.py").is_file()
    assert not _resources(template, "AWS::Serverless::Function"), "nothing of SAM is left after translation"


def test_functions_have_the_memory_timeout_and_triggers_asked_for(template: Template) -> None:
    detect, embed, search = (template.functions[name] for name in ("DetectFunction", "EmbedFunction", "SearchFunction"))
    assert (detect.memory_mb, detect.timeout_s) == (1536, 60)
    assert (embed.memory_mb, embed.timeout_s) == (2048, 120)
    assert (search.memory_mb, search.timeout_s) == (2048, 30)
    assert [(s.queue_logical_id, s.batch_size, s.maximum_batching_window_s) for s in detect.sqs_sources] == [
        ("DetectQueue", 10, 0)
    ]
    assert [(s.queue_logical_id, s.batch_size) for s in embed.sqs_sources] == [("EmbedQueue", 5)]
    assert not search.sqs_sources


def test_every_function_gets_the_shared_settings(template: Template) -> None:
    for function in template.functions.values():
        env = function.environment
        assert env["PHOTOS_TABLE"] == {"Ref": "PhotosTable"}
        assert env["FACES_TABLE"] == {"Ref": "FacesTable"}
        assert env["COLLECTIONS_TABLE"] == {"Ref": "CollectionsTable"}
        assert env["EMBED_QUEUE_URL"] == {"Ref": "EmbedQueue"}
        assert env["UPLOAD_BUCKET"] == {"Ref": "UploadBucket"}
        # An image has no model layer (/opt/models): its models are fetched into /tmp.
        assert env["MODEL_DIR"] == ("/tmp/models" if function.is_image else "/opt/models"), function.logical_id
        assert env["MIN_DETECTION_CONFIDENCE"] == {"Ref": "MinDetectionConfidence"}
        assert env["FACE_MATCH_THRESHOLD"] == {"Ref": "FaceMatchThreshold"}
        assert env["POWERTOOLS_SERVICE_NAME"] == function.logical_id.removesuffix("Function").lower()
    defaults = template.parameter_defaults
    assert (defaults["FaceMatchThreshold"], defaults["MinDetectionConfidence"], defaults["LogLevel"]) == (
        "80",
        "0.8",
        "INFO",
    )


@pytest.mark.parametrize("name", ["UploadBucket", "IndexBucket", "VideoResultsBucket"])
def test_every_bucket_is_encrypted_private_and_tls_only(template: Template, name: str) -> None:
    bucket = template.resources[name]["Properties"]
    rules = bucket["BucketEncryption"]["ServerSideEncryptionConfiguration"]
    assert rules[0]["ServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"
    assert all(bucket["PublicAccessBlockConfiguration"].values())
    assert len(bucket["PublicAccessBlockConfiguration"]) == 4

    policies = _resources(template, "AWS::S3::BucketPolicy").values()
    (policy,) = [p for p in policies if p["Properties"]["Bucket"] == {"Ref": name}]
    denials = [
        s
        for s in _statements(policy["Properties"]["PolicyDocument"])
        if s["Effect"] == "Deny" and s["Condition"]["Bool"]["aws:SecureTransport"] == "false"
    ]
    assert denials and denials[0]["Principal"] == "*"
    assert len(_as_list(denials[0]["Resource"])) == 2, "the bucket and its objects"


def test_uploads_notify_the_detect_queue_which_only_the_bucket_may_send_to(template: Template) -> None:
    bucket = template.resources["UploadBucket"]
    (notification,) = bucket["Properties"]["NotificationConfiguration"]["QueueConfigurations"]
    assert notification == {"Event": "s3:ObjectCreated:*", "Queue": {"Fn::GetAtt": ["DetectQueue", "Arn"]}}
    assert "DetectQueuePolicy" in _as_list(bucket["DependsOn"])

    policy = template.resources["DetectQueuePolicy"]["Properties"]
    (statement,) = _statements(policy["PolicyDocument"])
    assert statement["Principal"] == {"Service": "s3.amazonaws.com"}
    assert statement["Action"] == "sqs:SendMessage"
    # The queue policy names the bucket by the same fixed name the bucket is given.
    bucket_name = bucket["Properties"]["BucketName"]["Fn::Sub"]
    assert statement["Condition"]["ArnEquals"]["aws:SourceArn"] == {
        "Fn::Sub": f"arn:${{AWS::Partition}}:s3:::{bucket_name}"
    }
    assert statement["Condition"]["StringEquals"]["aws:SourceAccount"] == {"Ref": "AWS::AccountId"}


def test_every_queue_has_a_dead_letter_queue_and_encryption(template: Template) -> None:
    queues = _resources(template, "AWS::SQS::Queue")
    dead_letter = {
        q["Properties"]["RedrivePolicy"]["deadLetterTargetArn"]["Fn::GetAtt"][0]
        for q in queues.values()
        if "RedrivePolicy" in q["Properties"]
    }
    assert dead_letter == {
        "DetectDeadLetterQueue",
        "EmbedDeadLetterQueue",
        "VideoJobDeadLetterQueue",
        "VideoSegmentDeadLetterQueue",
    }
    for name, queue in queues.items():
        properties = queue["Properties"]
        assert properties["SqsManagedSseEnabled"] is True, name
        if name in dead_letter:
            assert properties["MessageRetentionPeriod"] == 14 * 24 * 3600
        else:
            assert 1 <= properties["RedrivePolicy"]["maxReceiveCount"] <= 5, name


def test_every_sqs_event_source_reports_batch_item_failures_and_outlives_its_function(
    template: Template,
) -> None:
    mappings = _resources(template, "AWS::Lambda::EventSourceMapping")
    queues = {name: m for name, m in mappings.items() if "Queue" in m["Properties"]["EventSourceArn"]["Fn::GetAtt"][0]}
    assert len(queues) == 4  # Detect, Embed, and VideoFunction's two queues
    for mapping in queues.values():
        assert mapping["Properties"]["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    for function in template.functions.values():
        for source in function.sqs_sources:
            assert source.report_batch_item_failures
            queue = template.resources[source.queue_logical_id]["Properties"]
            # AWS's advice: the visibility timeout is six times the function's timeout.
            assert queue["VisibilityTimeout"] == 6 * function.timeout_s, source.queue_logical_id


def test_every_table_is_encrypted_on_demand_and_recoverable(template: Template) -> None:
    tables = _resources(template, "AWS::DynamoDB::Table")
    assert set(tables) == {
        "PhotosTable",
        "FacesTable",
        "CollectionsTable",
        "CollectionChangesTable",
        "UsersTable",
        "AuditTable",
        "QuotasTable",
        "VideoJobsTable",
        "StreamProcessorsTable",
    }
    for name, table in tables.items():
        properties = table["Properties"]
        assert properties["SSESpecification"]["SSEEnabled"] is True, name
        assert properties["BillingMode"] == "PAY_PER_REQUEST", name
        # Minute counters, and a log whose loss costs only a rebuild from the faces table: nothing to recover.
        if name not in ("QuotasTable", "CollectionChangesTable"):
            assert properties["PointInTimeRecoverySpecification"]["PointInTimeRecoveryEnabled"] is True, name


def test_faces_are_searchable_by_collection(template: Template) -> None:
    faces = template.resources["FacesTable"]["Properties"]
    (index,) = faces["GlobalSecondaryIndexes"]
    assert index["IndexName"] == "ByCollection"
    assert index["KeySchema"] == [
        {"AttributeName": "collection_id", "KeyType": "HASH"},
        {"AttributeName": "face_id", "KeyType": "RANGE"},
    ]
    assert index["Projection"] == {"ProjectionType": "ALL"}


def test_no_policy_allows_a_wildcard_action_or_resource(template: Template) -> None:
    documents = [
        policy["PolicyDocument"]
        for role in _resources(template, "AWS::IAM::Role").values()
        for policy in role["Properties"].get("Policies", [])
    ]
    documents += [r["Properties"]["PolicyDocument"] for r in _resources(template, "AWS::SQS::QueuePolicy").values()]
    assert len(documents) >= 4
    for document in documents:
        for statement in _statements(document):
            if statement["Effect"] != "Allow":
                continue  # a Deny may be broad: the TLS-only bucket policy denies s3:*
            assert not any("*" in action for action in _as_list(statement["Action"])), statement
            assert "*" not in _as_list(statement["Resource"]), statement


def test_each_function_may_touch_only_what_it_uses(template: Template) -> None:
    def grants(function: str) -> dict[str, set[str]]:
        role = template.resources[f"{function}Role"]["Properties"]
        granted: dict[str, set[str]] = {}
        for policy in role["Policies"]:
            for statement in _statements(policy["PolicyDocument"]):
                for resource in _as_list(statement["Resource"]):
                    for target in referenced_resources(resource):
                        granted.setdefault(target, set()).update(_as_list(statement["Action"]))
        return granted

    # The audit log: append (PutItem under a free-key condition) and read the head (Query), nothing more.
    append_only = {"dynamodb:PutItem", "dynamodb:Query"}
    assert grants("DetectFunction") == {
        "UploadBucket": {"s3:GetObject", "s3:GetObjectTagging", "s3:PutObjectTagging"},
        "PhotosTable": {"dynamodb:PutItem"},
        "CollectionsTable": {"dynamodb:GetItem"},
        "EmbedQueue": {"sqs:SendMessage"},
        # An upload under videos/ is passed on as a video job.
        "VideoJobQueue": {"sqs:SendMessage"},
        "AuditTable": append_only,
    }
    assert grants("EmbedFunction") == {
        "UploadBucket": {"s3:GetObject"},
        "PhotosTable": {"dynamodb:PutItem", "dynamodb:GetItem"},
        "FacesTable": {"dynamodb:BatchWriteItem"},
        "CollectionsTable": {"dynamodb:GetItem", "dynamodb:UpdateItem"},
        "CollectionChangesTable": append_only,
        # FaceNet from the model bucket (ModelBucket/ModelPrefix*, read-only).
        "ModelBucket": {"s3:GetObject"},
        "ModelPrefix": {"s3:GetObject"},
        "AuditTable": append_only,
    }
    assert grants("SearchFunction") == {
        # DeleteObject and the photos table: erasure removes a person's enrolment photos.
        "UploadBucket": {"s3:GetObject", "s3:DeleteObject"},
        "PhotosTable": {"dynamodb:GetItem", "dynamodb:DeleteItem"},
        "AuditTable": append_only,
        "QuotasTable": {"dynamodb:UpdateItem"},
        "ModelBucket": {"s3:GetObject"},
        "ModelPrefix": {"s3:GetObject"},
        # BatchGetItem: the hits a search returns are checked against the table (the index may lag a delete).
        "FacesTable": {"dynamodb:Query", "dynamodb:BatchGetItem", "dynamodb:BatchWriteItem", "dynamodb:UpdateItem"},
        "CollectionsTable": {
            "dynamodb:GetItem",
            "dynamodb:PutItem",
            "dynamodb:DeleteItem",
            "dynamodb:Scan",
            "dynamodb:UpdateItem",
        },
        "CollectionChangesTable": append_only,
        "UsersTable": {"dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:DeleteItem", "dynamodb:Query"},
        "IndexBucket": {"s3:ListBucket", "s3:GetObject", "s3:PutObject", "s3:DeleteObject"},
        # Collections on S3 Vectors: their vector indexes, and nothing else of S3 Vectors.
        "VectorBucket": {
            "s3vectors:CreateIndex",
            "s3vectors:DeleteIndex",
            "s3vectors:GetIndex",
            "s3vectors:PutVectors",
            "s3vectors:DeleteVectors",
            "s3vectors:GetVectors",
            "s3vectors:ListVectors",
            "s3vectors:QueryVectors",
        },
        # Video jobs: Start* records and queues one, Get* pages its results, erasure rewrites them.
        "VideoJobsTable": {
            "dynamodb:GetItem",
            "dynamodb:PutItem",
            "dynamodb:UpdateItem",
            "dynamodb:Query",
            "dynamodb:DeleteItem",
        },
        "VideoResultsBucket": {"s3:GetObject", "s3:PutObject"},
        "VideoJobQueue": {"sqs:SendMessage"},
        # Stream processors: created, started, listed, deleted; a transaction claims the input stream.
        "StreamProcessorsTable": {
            "dynamodb:GetItem",
            "dynamodb:PutItem",
            "dynamodb:DeleteItem",
            "dynamodb:Query",
        },
    }
    # Stored videos read the upload, the models and the collections' faces and index, and write only their job's
    # records, results and segments: a video never changes a face, a photo, a user, a collection or an index.
    video = grants("VideoFunction")
    reads = {"s3:GetObject", "s3:ListBucket", "dynamodb:GetItem", "dynamodb:Query", "dynamodb:BatchGetItem"}
    reads |= {"s3vectors:GetIndex", "s3vectors:GetVectors", "s3vectors:ListVectors", "s3vectors:QueryVectors"}
    for target in ("UploadBucket", "FacesTable", "PhotosTable", "UsersTable", "CollectionsTable", "IndexBucket"):
        assert video.get(target, set()) <= reads, (target, video[target])
    assert video.get("VectorBucket", set()) <= reads and video["AuditTable"] == append_only
    # A plan queues segments; a failed message is brought back sooner (VIDEO_RETRY_DELAY_S), on both queues.
    assert video["VideoSegmentQueue"] == video["VideoJobQueue"] == {"sqs:SendMessage", "sqs:ChangeMessageVisibility"}
    assert {"dynamodb:PutItem", "dynamodb:UpdateItem"} <= video["VideoJobsTable"]
    # Live frames read the same, and write only their processors' state and the audit (the output records go
    # to the caller's stream as the caller's role).
    live = grants("LiveFunction")
    for target in ("FacesTable", "CollectionsTable", "IndexBucket", "VectorBucket"):
        assert live.get(target, set()) <= reads, (target, live[target])
    assert live["AuditTable"] == append_only and "UploadBucket" not in live
    assert live["StreamProcessorsTable"] == {"dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:DeleteItem"}
    # The digest function reads the chains' heads and the collection ids, signs, and writes digests: it can
    # neither change the audit table nor delete a digest.
    assert grants("DigestFunction") == {
        "AuditTable": {"dynamodb:Query"},
        "CollectionsTable": {"dynamodb:Scan"},
        "AuditDigestKey": {"kms:Sign"},
        "AuditDigestBucket": {"s3:ListBucket", "s3:GetObject", "s3:PutObject"},
    }


def test_search_and_admin_are_function_urls_behind_iam_each_invoked_by_its_own_role(template: Template) -> None:
    urls = {
        url["Properties"]["TargetFunctionArn"]["Ref"]: url for url in _resources(template, "AWS::Lambda::Url").values()
    }
    assert set(urls) == {"SearchFunction", "AdminFunction"}
    for name, url in urls.items():
        assert url["Properties"]["AuthType"] == "AWS_IAM"
        assert template.functions[name].function_url_auth == "AWS_IAM"
        assert template.cfn["Outputs"][f"{name}Url"]["Value"] == {"Fn::GetAtt": [f"{name}Url", "FunctionUrl"]}
    # The same code; only the admin one serves the policy administration.
    search, admin = template.functions["SearchFunction"], template.functions["AdminFunction"]
    assert search.code_dir == admin.code_dir and admin.environment["FACE_API_ROLE"] == "admin"
    invokes = {}
    for name in ("FaceApiSearchRole", "PolicyAdminRole"):
        (policy,) = template.resources[name]["Properties"]["Policies"]
        (statement,) = policy["PolicyDocument"]["Statement"]
        invokes[name] = (statement["Action"], statement["Resource"])
    assert invokes == {
        "FaceApiSearchRole": ("lambda:InvokeFunctionUrl", {"Fn::GetAtt": ["SearchFunction", "Arn"]}),
        "PolicyAdminRole": ("lambda:InvokeFunctionUrl", {"Fn::GetAtt": ["AdminFunction", "Arn"]}),
    }


def test_outputs_name_every_bucket_table_and_queue(template: Template) -> None:
    referenced = set().union(*(referenced_resources(o["Value"]) for o in template.cfn["Outputs"].values()))
    stateful = ("AWS::S3::Bucket", "AWS::DynamoDB::Table", "AWS::SQS::Queue", "AWS::Kinesis::Stream")
    assert {name for name, r in template.resources.items() if r["Type"] in stateful} <= referenced


def test_the_local_runtime_deploys_everything_but_the_functions(template: Template) -> None:
    infrastructure = template.infrastructure()["Resources"]
    assert {r["Type"] for r in infrastructure.values()} == {
        "AWS::S3::Bucket",
        "AWS::S3::BucketPolicy",
        "AWS::SQS::Queue",
        "AWS::SQS::QueuePolicy",
        "AWS::DynamoDB::Table",
        "AWS::CloudWatch::Alarm",
        "AWS::Logs::LogGroup",
        "AWS::KMS::Key",
        "AWS::S3Vectors::VectorBucket",
        "AWS::Kinesis::Stream",
    }
    assert "SearchFunctionUrl" not in template.infrastructure()["Outputs"]
    # Alarms and dashboards that name a function go with the functions.
    assert "DetectErrorsAlarm" not in infrastructure and "PipelineDashboard" not in infrastructure
    assert "DetectDeadLettersAlarm" in infrastructure


def test_alarms_watch_dead_letters_queue_age_and_function_errors(template: Template) -> None:
    watched: dict[str, set[str]] = {}
    for alarm in _resources(template, "AWS::CloudWatch::Alarm").values():
        properties = alarm["Properties"]
        for target in referenced_resources(properties["Dimensions"]):
            watched.setdefault(target, set()).add(properties["MetricName"])
    queues = _resources(template, "AWS::SQS::Queue")
    dead_letter_queues = {name for name in queues if "DeadLetter" in name}
    for name in queues:
        wanted = "ApproximateNumberOfMessagesVisible" if name in dead_letter_queues else "ApproximateAgeOfOldestMessage"
        assert wanted in watched.get(name, set()), name
    for name in _resources(template, "AWS::Lambda::Function"):
        assert "Errors" in watched.get(name, set()), name
    (dashboard,) = _resources(template, "AWS::CloudWatch::Dashboard").values()
    body = str(dashboard["Properties"]["DashboardBody"])
    assert all(metric in body for metric in ("FacesDetected", "PhotosFailed", "DetectionLatency", "Errors"))


def test_layers_are_in_lambdas_layout_and_the_model_layer_builds_with_make() -> None:
    sam = load_yaml(TEMPLATE)
    assert sam["Resources"]["SharedLayer"]["Properties"]["ContentUri"] == "layers/shared/"
    model_layer = sam["Resources"]["ModelLayer"]
    assert model_layer["Metadata"]["BuildMethod"] == "makefile"
    makefile = ROOT / model_layer["Properties"]["ContentUri"] / "Makefile"
    assert "build-ModelLayer:" in makefile.read_text(encoding="utf-8")
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    plan = subprocess.run(
        ["make", "-n", "-f", str(makefile), "build-ModelLayer", "ARTIFACTS_DIR=/artifacts"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    # Each zip function names its runtime (an image function may not: tests/test_image_functions.py), all one.
    (runtime,) = {
        resource["Properties"]["Runtime"]
        for resource in sam["Resources"].values()
        if resource["Type"] == "AWS::Serverless::Function" and resource["Properties"].get("PackageType") != "Image"
    }
    assert f"--python-version {runtime.removeprefix('python')}" in plan
    assert "/artifacts/models/" in plan and '--target "/artifacts/python"' in plan
