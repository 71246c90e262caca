"""Container-image functions (PackageType: Image): the local runtime plays them from their Dockerfile, as it
plays zip functions from their CodeUri and layers. VideoFunction is one (PyAV and the model runtime pass
Lambda's 250 MB zip limit); `sam build` builds its image where Docker runs, so these tests read the
Dockerfile instead of building it."""

from __future__ import annotations

import ast
import json
import re
import textwrap
import uuid
from collections.abc import Iterator
from importlib.machinery import PathFinder
from pathlib import Path

import pytest

from candor_local.emulator.runtime import LocalEnvironment
from candor_local.emulator.template import Template, TemplateError, load_template, load_yaml, read_dockerfile

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = ROOT / "template.yaml"
DOCKERFILE = ROOT / "services" / "video" / "Dockerfile"


@pytest.fixture(scope="module")
def template() -> Template:
    return load_template(TEMPLATE)


# ---------------------------------------------------------------- VideoFunction, as template.yaml has it


def test_video_function_is_described_from_its_image(template: Template) -> None:
    video = template.functions["VideoFunction"]
    assert video.is_image
    assert video.handler == "app.lambda_handler"
    assert video.runtime == "python3.12"
    # The service's code first (copied last, it wins in the image), then the shared package; no layers.
    assert video.python_path == [ROOT / "services/video", ROOT / "layers/shared/python"]
    assert video.code_dir == ROOT / "services/video"
    assert video.layer_dirs == ()
    assert (video.timeout_s, video.memory_mb) == (300, 3008)
    assert video.environment["POWERTOOLS_SERVICE_NAME"] == "video"


def test_video_function_polls_its_job_and_segment_queues(template: Template) -> None:
    video = template.functions["VideoFunction"]
    sources = {
        source.queue_logical_id: (source.batch_size, source.report_batch_item_failures, source.maximum_concurrency)
        for source in video.sqs_sources
    }
    assert sources == {"VideoJobQueue": (1, True, None), "VideoSegmentQueue": (1, True, 2)}
    # Segments run two at a time: the local runtime starts two instances, as Lambda's poller would invoke them.
    assert video.instances == 2
    assert not video.has_function_url


def test_the_image_runs_the_runtime_the_zip_functions_run(template: Template) -> None:
    runtimes = {function.runtime for function in template.functions.values()}
    assert runtimes == {"python3.12"}
    metadata = load_yaml(TEMPLATE)["Resources"]["VideoFunction"]["Metadata"]
    assert metadata["DockerTag"] == "python3.12"


def test_the_dockerfile_installs_the_video_requirements_and_copies_what_the_local_import_path_holds(
    template: Template,
) -> None:
    text = DOCKERFILE.read_text(encoding="utf-8")
    assert re.search(r"^RUN pip install .*-r /tmp/requirements/video\.txt$", text, re.MULTILINE)
    assert re.search(r"^COPY requirements/runtime\.txt requirements/video\.txt /tmp/requirements/$", text, re.MULTILINE)
    video_requirements = (ROOT / "requirements" / "video.txt").read_text(encoding="utf-8").splitlines()
    assert "-r runtime.txt" in video_requirements and "av==18.1.0" in video_requirements
    # Read here with a plain pattern, not the runtime's reader: the two must agree.
    copied = re.findall(r"^COPY (\S+) \$\{LAMBDA_TASK_ROOT\}$", text, re.MULTILINE)
    assert copied == ["layers/shared/python", "services/video"]
    video = template.functions["VideoFunction"]
    assert video.python_path == [ROOT / source for source in reversed(copied)]


def test_the_video_handler_and_the_shared_package_are_found_on_the_image_import_path(template: Template) -> None:
    video = template.functions["VideoFunction"]
    path = [str(entry) for entry in video.python_path]
    module, _, function = video.handler.rpartition(".")
    # Found on that path alone, as in the image's /var/task (importing it would load the models).
    handler_spec = PathFinder.find_spec(module, path)
    assert handler_spec is not None and handler_spec.origin == str(ROOT / "services/video/app.py")
    tree = ast.parse(Path(handler_spec.origin).read_text(encoding="utf-8"))
    assert function in {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}
    shared_spec = PathFinder.find_spec("candor", path)
    assert shared_spec is not None and shared_spec.origin == str(ROOT / "layers/shared/python/candor/__init__.py")


# ---------------------------------------------------------------- reading a Dockerfile

_FUNCTION = """\
AWSTemplateFormatVersion: "2010-09-09"
Transform: AWS::Serverless-2016-10-31
Resources:
  Work:
    Type: AWS::SQS::Queue
  ImageFunction:
    Type: AWS::Serverless::Function
{metadata}    Properties:
      PackageType: Image
{properties}      Events:
        Work:
          Type: SQS
          Properties:
            Queue: !GetAtt Work.Arn
"""
_METADATA = """\
    Metadata:
      Dockerfile: fn/Dockerfile
      DockerContext: .
      DockerTag: python3.12
"""
_COMMAND = """\
      ImageConfig:
        Command: [app.lambda_handler]
"""
_PUSHED_IMAGE = "123456789012.dkr.ecr.eu-west-1.amazonaws.com/candor:video"
_DOCKERFILE = """\
FROM public.ecr.aws/lambda/python:3.12
COPY shared ${LAMBDA_TASK_ROOT}
COPY fn ${LAMBDA_TASK_ROOT}
"""


def _stack(root: Path, *, metadata: str = _METADATA, properties: str = _COMMAND, dockerfile: str = _DOCKERFILE) -> Path:
    for folder in ("fn", "shared"):
        (root / folder).mkdir(exist_ok=True)
    (root / "fn" / "app.py").write_text("def lambda_handler(event, context):\n    return {}\n", encoding="utf-8")
    (root / "fn" / "Dockerfile").write_text(dockerfile, encoding="utf-8")
    path = root / "template.yaml"
    path.write_text(_FUNCTION.format(metadata=metadata, properties=properties), encoding="utf-8")
    return path


def test_an_image_function_of_another_template_is_described_from_its_dockerfile(tmp_path: Path) -> None:
    spec = load_template(_stack(tmp_path)).functions["ImageFunction"]
    assert (spec.handler, spec.runtime) == ("app.lambda_handler", "python3.12")
    assert spec.python_path == [tmp_path / "fn", tmp_path / "shared"]
    assert [source.queue_logical_id for source in spec.sqs_sources] == ["Work"]
    # Lambda's defaults, as for a zip function that sets neither.
    assert (spec.timeout_s, spec.memory_mb) == (3, 128)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"metadata": ""}, r"ImageFunction: a container image function \(PackageType: Image\) needs an ImageUri or "),
        (
            {
                "metadata": "",
                "properties": _COMMAND + f"      ImageUri: {_PUSHED_IMAGE}\n",
            },
            r"ImageFunction is a container image without Metadata\.Dockerfile",
        ),
        ({"properties": ""}, r"ImageFunction: a container image function needs ImageConfig\.Command"),
        ({"metadata": _METADATA.replace("fn/Dockerfile", "fn/Missing")}, r"Dockerfile .*fn/Missing cannot be read"),
        ({"metadata": _METADATA.replace("      DockerContext: .\n", "")}, r"needs Metadata\.DockerContext"),
        ({"dockerfile": "FROM public.ecr.aws/lambda/python:3.12\nCOPY fn /opt/\n"}, r"copies nothing into"),
        ({"dockerfile": "FROM python:3.12-slim\nCOPY fn /var/task\n"}, r"built FROM python:3\.12-slim; the local"),
        (
            {"dockerfile": "FROM public.ecr.aws/lambda/python:3.12\nCOPY gone ${LAMBDA_TASK_ROOT}\n"},
            r"Dockerfile:2: COPY gone: no such file or directory in the build context",
        ),
        ({"dockerfile": "# nothing but a comment\n"}, r"has no FROM line"),
    ],
)
def test_an_image_function_the_local_runtime_cannot_play_is_refused_with_the_reason(
    tmp_path: Path, change: dict[str, str], message: str
) -> None:
    with pytest.raises(TemplateError, match=message):
        load_template(_stack(tmp_path, **change))


def test_the_dockerfile_is_read_as_docker_builds_it(tmp_path: Path) -> None:
    for folder in ("app", "lib", "vendor", "data"):
        (tmp_path / folder).mkdir()
    (tmp_path / "handler.py").write_text("", encoding="utf-8")
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text(
        textwrap.dedent(
            """\
            # syntax=docker/dockerfile:1
            ARG TAG=3.12
            FROM public.ecr.aws/lambda/python:3.12 AS build
            RUN pip install --target /deps -r requirements.txt
            FROM --platform=linux/amd64 public.ecr.aws/lambda/python:3.12-x86_64
            COPY --from=build /deps ${LAMBDA_TASK_ROOT}
            COPY ["vendor", "/var/task/"]
            COPY data /opt/data
            # WORKDIR is the task root in Lambda's base images
            COPY --chown=1000 lib \\
                 handler.py ./
            COPY app $LAMBDA_TASK_ROOT/
            """
        ),
        encoding="utf-8",
    )
    image = read_dockerfile(dockerfile, tmp_path)
    assert image.runtime == "python3.12"
    # Last copied first; a copied file brings its folder; another stage's files and /opt are not the task root.
    assert image.task_root_dirs == (tmp_path / "app", tmp_path, tmp_path / "lib", tmp_path / "vendor")


# ---------------------------------------------------------------- played by the local runtime

_PLAYED_TEMPLATE = """\
AWSTemplateFormatVersion: "2010-09-09"
Transform: AWS::Serverless-2016-10-31
Resources:
  Work:
    Type: AWS::SQS::Queue
    Properties:
      VisibilityTimeout: 30
  Results:
    Type: AWS::DynamoDB::Table
    Properties:
      BillingMode: PAY_PER_REQUEST
      AttributeDefinitions: [{AttributeName: id, AttributeType: S}]
      KeySchema: [{AttributeName: id, KeyType: HASH}]
  ImageFunction:
    Type: AWS::Serverless::Function
    Metadata:
      Dockerfile: fn/Dockerfile
      DockerContext: .
      DockerTag: python3.12
    Properties:
      PackageType: Image
      ImageConfig:
        Command: [app.lambda_handler]
      Timeout: 5
      MemorySize: 512
      Environment:
        Variables:
          RESULTS_TABLE: !Ref Results
      Events:
        Work:
          Type: SQS
          Properties:
            Queue: !GetAtt Work.Arn
            BatchSize: 1
            FunctionResponseTypes: [ReportBatchItemFailures]
"""

_PLAYED_APP = """\
import json
import os

import boto3
import origin
from shared_mark import SHARED

table = boto3.resource("dynamodb").Table(os.environ["RESULTS_TABLE"])


def lambda_handler(event, context):
    for record in event["Records"]:
        table.put_item(Item={
            "id": json.loads(record["body"])["id"],
            "origin": origin.WHERE,
            "shared": SHARED,
            "task_root": os.environ["LAMBDA_TASK_ROOT"],
            "execution_env": os.environ["AWS_EXECUTION_ENV"],
            "memory": context.memory_limit_in_mb,
        })
    return {"batchItemFailures": []}
"""


@pytest.fixture(scope="module")
def played(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalEnvironment]:
    root = tmp_path_factory.mktemp("image-stack")
    (root / "template.yaml").write_text(_PLAYED_TEMPLATE, encoding="utf-8")
    (root / "fn").mkdir()
    (root / "shared").mkdir()
    (root / "fn" / "Dockerfile").write_text(_DOCKERFILE, encoding="utf-8")
    (root / "fn" / "app.py").write_text(_PLAYED_APP, encoding="utf-8")
    # The same module in both folders: the image holds the one copied last (the function's).
    (root / "fn" / "origin.py").write_text('WHERE = "fn"\n', encoding="utf-8")
    (root / "shared" / "origin.py").write_text('WHERE = "shared"\n', encoding="utf-8")
    (root / "shared" / "shared_mark.py").write_text('SHARED = "from shared"\n', encoding="utf-8")
    with LocalEnvironment.start(
        stack_name="image", endpoint_url=None, template_path=root / "template.yaml", log_dir=root / "logs"
    ) as environment:
        yield environment


@pytest.mark.integration
def test_the_local_runtime_plays_an_image_function_from_its_dockerfile(played: LocalEnvironment) -> None:
    message_id = uuid.uuid4().hex
    played.client("sqs").send_message(QueueUrl=played.resources["Work"], MessageBody=json.dumps({"id": message_id}))
    played.wait_idle(timeout=30, settle_s=0.5)
    table = played.session.resource("dynamodb", endpoint_url=played.endpoint_url).Table(played.resources["Results"])
    item = table.get_item(Key={"id": message_id})["Item"]
    root = played.template.path.parent
    assert item == {
        "id": message_id,
        "origin": "fn",
        "shared": "from shared",
        "task_root": str(root / "fn"),
        "execution_env": "AWS_Lambda_python3.12",
        "memory": "512",
    }
