"""Read template.yaml the way AWS does: parse the short-form tags, translate SAM to CloudFormation with
aws-sam-translator (offline), and describe each function from the translated resources.

Everything the local runtime knows about resources comes from here; nothing is listed a second time. A
container-image function (PackageType: Image) is played from what its Dockerfile (SAM's Metadata.Dockerfile)
copies into Lambda's task root: the same directories, on the import path in the image's order.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import posixpath
import re
import shlex
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import yaml
from samtranslator.metrics.metrics import DummyMetricsPublisher, Metrics
from samtranslator.parser.parser import Parser
from samtranslator.translator.translator import Translator
from samtranslator.utils.py27hash_fix import to_py27_compatible_template, undo_mark_unicode_str_in_template
from samtranslator.yaml_helper import intrinsics_multi_constructor

logger = logging.getLogger(__name__)

DEFAULT_TEMPLATE_PATH = Path(__file__).resolve().parents[3] / "template.yaml"
DEFAULT_REGION = "us-east-1"

# Stand-in S3 bucket for local code paths: the translator only accepts S3 locations, and the key carries the
# SAM logical id so the translated Code/Content can be mapped back to the local directory.
_LOCAL_ARTIFACTS_BUCKET = "candor-local-artifacts"
# Stand-in repository for container-image functions built from a Dockerfile (what `sam build` would push): the
# translator needs an ImageUri, and the tag carries the logical id so the function maps back to its Dockerfile.
_LOCAL_IMAGE_REPOSITORY = "candor-local-image"

# Where Lambda's base images keep the function's code (LAMBDA_TASK_ROOT, also their WORKDIR).
LAMBDA_TASK_ROOT = "/var/task"
# AWS's Python base images, public.ecr.aws/lambda/python:<version>[<suffix>] (3.12, 3.12-x86_64, 3.12.2025...).
_LAMBDA_PYTHON_IMAGE = re.compile(r"^public\.ecr\.aws/lambda/python:(\d+\.\d+)(?:[.-][\w.-]*)?$")

# Resource types the local runtime plays itself (a worker process per function) instead of deploying.
LAMBDA_RESOURCE_TYPES = frozenset(
    {
        "AWS::Lambda::Function",
        "AWS::Lambda::LayerVersion",
        "AWS::Lambda::EventSourceMapping",
        "AWS::Lambda::Permission",
        "AWS::Lambda::Url",
        "AWS::Lambda::Version",
        "AWS::Lambda::Alias",
        "AWS::IAM::Role",
    }
)


class TemplateError(ValueError):
    """The template cannot be read, translated, or holds something the local runtime cannot play."""


class _CfnLoader(yaml.SafeLoader):
    """SafeLoader that understands CloudFormation's short-form tags (!Ref, !Sub, !GetAtt A.B, ...)."""


_CfnLoader.add_multi_constructor("!", intrinsics_multi_constructor)


def _no_iam_policy_map() -> dict[str, str]:
    """Managed policy names resolve from the map bundled with aws-sam-translator; IAM is never asked, so
    translation needs neither credentials nor network (a name missing from that map is an error)."""
    return {}


@dataclass(frozen=True)
class SqsEventSource:
    """An SQS event source mapping, as Lambda's poller would read it."""

    logical_id: str
    queue_logical_id: str
    batch_size: int
    maximum_batching_window_s: int
    report_batch_item_failures: bool
    # ScalingConfig.MaximumConcurrency: how many instances the mapping invokes at once (None: no cap).
    maximum_concurrency: int | None = None


@dataclass(frozen=True)
class KinesisEventSource:
    """A Kinesis data stream event source mapping, as Lambda's shard poller would read it."""

    logical_id: str
    stream_logical_id: str
    starting_position: str  # LATEST, TRIM_HORIZON or AT_TIMESTAMP
    batch_size: int = 100
    maximum_batching_window_s: int = 0
    # -1: retry until the record expires (Lambda's default); otherwise a batch is skipped after this many retries.
    maximum_retry_attempts: int = -1
    bisect_batch_on_function_error: bool = False
    report_batch_item_failures: bool = False
    starting_position_timestamp: float | None = None  # AT_TIMESTAMP only, seconds since the epoch
    # DestinationConfig.OnFailure: an SQS queue of the template that is told of each skipped batch.
    on_failure_queue_logical_id: str | None = None


@dataclass(frozen=True)
class ImageBuild:
    """What a container-image function's Dockerfile builds, as far as the local runtime plays it."""

    dockerfile: Path
    context: Path
    runtime: str  # from the base image: public.ecr.aws/lambda/python:3.12 is python3.12
    # The local directories its COPY lines put into the task root, the one copied last (which wins) first.
    task_root_dirs: tuple[Path, ...]


@dataclass(frozen=True)
class FunctionSpec:
    """One function of the translated template, with its local code and layer directories (a zip function)
    or the directories its image's Dockerfile copies into the task root (a container-image function)."""

    logical_id: str
    handler: str
    runtime: str
    code_dir: Path
    layer_dirs: tuple[Path, ...]
    environment: Mapping[str, Any]  # values may still hold intrinsics (Ref, GetAtt, Sub)
    timeout_s: int
    memory_mb: int
    sqs_sources: tuple[SqsEventSource, ...] = ()
    function_url_auth: str | None = None
    image: ImageBuild | None = None  # a container-image function's Dockerfile, read; None for a zip function
    kinesis_sources: tuple[KinesisEventSource, ...] = ()

    @property
    def has_function_url(self) -> bool:
        return self.function_url_auth is not None

    @property
    def is_image(self) -> bool:
        """PackageType: Image (its code is what the Dockerfile copies; Lambda's 250 MB zip limit is not its)."""
        return self.image is not None

    @property
    def instances(self) -> int:
        """How many instances the local runtime starts: the largest ScalingConfig.MaximumConcurrency of
        its SQS event sources, else one. A function with a Function URL runs one (the URL is one port)."""
        if self.has_function_url:
            return 1
        caps = [source.maximum_concurrency for source in self.sqs_sources if source.maximum_concurrency]
        return max(caps, default=1)

    @property
    def python_path(self) -> list[Path]:
        """Import path in Lambda's order: the code (/var/task), then each layer's python/ (/opt/python). An
        image has no layers: everything is in /var/task, so the directories its Dockerfile copies there,
        the last copied first (a later COPY overwrites an earlier one's files)."""
        if self.image is not None:
            return list(self.image.task_root_dirs)
        return [self.code_dir, *(layer / "python" for layer in self.layer_dirs)]


@dataclass(frozen=True)
class Template:
    path: Path
    sam: dict[str, Any]
    cfn: dict[str, Any]
    functions: dict[str, FunctionSpec] = field(default_factory=dict)

    @property
    def resources(self) -> dict[str, Any]:
        return dict(self.cfn.get("Resources", {}))

    @property
    def parameter_defaults(self) -> dict[str, str]:
        return {
            name: str(spec["Default"]) for name, spec in self.sam.get("Parameters", {}).items() if "Default" in spec
        }

    def url_invokers(self, function_id: str) -> list[str]:
        """The roles (logical ids) whose inline policies allow lambda:InvokeFunctionUrl on the function's Arn,
        as IAM would read them; empty when no role of the template names it."""
        invokers = []
        for logical_id, resource in self.cfn["Resources"].items():
            if resource["Type"] != "AWS::IAM::Role":
                continue
            policies = (resource.get("Properties") or {}).get("Policies") or []
            statements = [s for p in policies for s in _as_list((p.get("PolicyDocument") or {}).get("Statement"))]
            if any(_allows_url_invocation(statement, function_id) for statement in statements):
                invokers.append(logical_id)
        return sorted(invokers)

    def infrastructure(self) -> dict[str, Any]:
        """The translated template minus what the local runtime plays itself (functions, roles, layers,
        mappings, permissions, URLs): what is deployed as a stack on any endpoint."""
        resources = {
            logical_id: copy.deepcopy(resource)
            for logical_id, resource in self.cfn["Resources"].items()
            if resource["Type"] not in LAMBDA_RESOURCE_TYPES
        }
        # Whatever names a function (an alarm on its errors, a dashboard of its duration) goes with it.
        while dropped := [
            logical_id
            for logical_id, resource in resources.items()
            if referenced_resources(resource) - resources.keys() & self.cfn["Resources"].keys()
        ]:
            for logical_id in dropped:
                del resources[logical_id]
        for resource in resources.values():
            depends = resource.get("DependsOn")
            if depends is not None:
                kept = [d for d in ([depends] if isinstance(depends, str) else depends) if d in resources]
                if kept:
                    resource["DependsOn"] = kept
                else:
                    del resource["DependsOn"]
        outputs = {
            name: copy.deepcopy(output)
            for name, output in self.cfn.get("Outputs", {}).items()
            if referenced_resources(output) <= resources.keys()
        }
        infra = {key: copy.deepcopy(value) for key, value in self.cfn.items() if key not in ("Resources", "Outputs")}
        infra["Resources"] = resources
        if outputs:
            infra["Outputs"] = outputs
        return infra


def load_yaml(path: Path) -> dict[str, Any]:
    """Parse a CloudFormation/SAM YAML file, short-form intrinsic tags included."""
    with path.open(encoding="utf-8") as handle:
        document = yaml.load(handle, Loader=_CfnLoader)
    if not isinstance(document, dict) or "Resources" not in document:
        raise TemplateError(f"{path} is not a CloudFormation template (no Resources)")
    return document


def translate(
    sam: Mapping[str, Any], parameter_values: Mapping[str, Any] | None = None, region: str | None = None
) -> dict[str, Any]:
    """Translate a SAM template to plain CloudFormation offline, as the AWS::Serverless transform would.

    Local CodeUri/ContentUri paths are swapped for stand-in S3 locations first (the translator accepts
    only S3), and a container-image function built from a Dockerfile (Metadata.Dockerfile, what `sam build`
    builds and pushes) gets a stand-in ImageUri; `FunctionSpec` maps them back."""
    document = copy.deepcopy(dict(sam))
    for logical_id, resource in document.get("Resources", {}).items():
        properties = resource.get("Properties") or {}
        for key in ("CodeUri", "ContentUri"):
            if isinstance(properties.get(key), str) and not properties[key].startswith("s3://"):
                properties[key] = f"s3://{_LOCAL_ARTIFACTS_BUCKET}/{logical_id}"
        if _is_image_function(resource) and "ImageUri" not in properties:
            if not (resource.get("Metadata") or {}).get("Dockerfile"):
                raise TemplateError(
                    f"{logical_id}: a container image function (PackageType: Image) needs an ImageUri or "
                    "Metadata.Dockerfile and Metadata.DockerContext (what `sam build` builds its image from; "
                    "the local runtime reads the function's code from that Dockerfile)"
                )
            properties["ImageUri"] = _stand_in_image_uri(logical_id)
    # What samtranslator.translator.transform.transform does, but with an explicit session: transform()
    # builds its own and needs a region configured in the environment. The session makes no call.
    session = boto3.session.Session(region_name=region or os.environ.get("AWS_DEFAULT_REGION") or DEFAULT_REGION)
    values = dict(parameter_values or {})
    try:
        to_py27_compatible_template(document, values)
        # Metrics are only published to CloudWatch by the hosted transform; publishing to the dummy
        # publisher keeps the translator from warning about unpublished ones.
        metrics = Metrics("ServerlessTransform", DummyMetricsPublisher())
        translator = Translator(None, Parser(), boto_session=session, metrics=metrics)
        translated = translator.translate(document, parameter_values=values, get_managed_policy_map=_no_iam_policy_map)
        metrics.publish()
        return dict(undo_mark_unicode_str_in_template(translated))
    except Exception as error:  # the translator raises its own exception types, with every cause listed
        causes = getattr(error, "causes", None)
        detail = "; ".join(str(cause) for cause in causes) if causes else str(error)
        raise TemplateError(f"SAM translation failed: {detail}") from error


def load_template(
    path: Path | str = DEFAULT_TEMPLATE_PATH,
    parameter_values: Mapping[str, Any] | None = None,
    region: str | None = None,
) -> Template:
    """Load, translate and describe a SAM template; local paths resolve against the template's folder."""
    path = Path(path).resolve()
    sam = load_yaml(path)
    cfn = translate(sam, parameter_values, region)
    local_dirs = _local_artifact_dirs(sam, path.parent)
    images = _local_images(sam, path.parent)
    parameters = {name: spec.get("Default") for name, spec in (sam.get("Parameters") or {}).items()}
    parameters.update(parameter_values or {})
    functions = {
        logical_id: _describe_function(logical_id, cfn["Resources"], local_dirs, images, parameters)
        for logical_id, resource in cfn["Resources"].items()
        if resource["Type"] == "AWS::Lambda::Function"
    }
    return Template(path=path, sam=sam, cfn=cfn, functions=functions)


def referenced_resources(node: Any) -> set[str]:
    """Logical ids a template fragment refers to through Ref, Fn::GetAtt or Fn::Sub."""
    found: set[str] = set()
    for kind, value in _intrinsics(node):
        if kind == "Ref" and isinstance(value, str) and not value.startswith("AWS::"):
            found.add(value)
        elif kind == "Fn::GetAtt":
            target = value[0] if isinstance(value, list) else str(value).split(".", 1)[0]
            found.add(target)
        elif kind == "Fn::Sub":
            text = value[0] if isinstance(value, list) else value
            for name in _sub_variables(text):
                if not name.startswith("AWS::"):
                    found.add(name.split(".", 1)[0])
    return found


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [] if value is None else [value]


def _allows_url_invocation(statement: Any, function_id: str) -> bool:
    """An Allow statement with lambda:InvokeFunctionUrl (or a wildcard over it) on the function's Arn."""
    if not isinstance(statement, dict) or statement.get("Effect") != "Allow":
        return False
    actions = {str(action).lower() for action in _as_list(statement.get("Action"))}
    if not actions & {"lambda:invokefunctionurl", "lambda:*", "*"}:
        return False
    arn = {"Fn::GetAtt": [function_id, "Arn"]}
    for resource in _as_list(statement.get("Resource")):
        if resource in (arn, {"Fn::GetAtt": f"{function_id}.Arn"}, {"Fn::Sub": f"${{{function_id}.Arn}}"}):
            return True
    return False


def _intrinsics(node: Any) -> Iterator[tuple[str, Any]]:
    if isinstance(node, dict):
        if len(node) == 1:
            ((key, value),) = node.items()
            if key == "Ref" or key.startswith("Fn::"):
                yield key, value
        for value in node.values():
            yield from _intrinsics(value)
    elif isinstance(node, list):
        for item in node:
            yield from _intrinsics(item)


def _sub_variables(text: str) -> list[str]:
    """Variable names in a Fn::Sub string (`${!Literal}` is an escape, not a variable)."""
    names: list[str] = []
    start = text.find("${")
    while start != -1:
        end = text.find("}", start)
        if end == -1:
            break
        name = text[start + 2 : end]
        if not name.startswith("!"):
            names.append(name)
        start = text.find("${", end)
    return names


def _local_artifact_dirs(sam: Mapping[str, Any], base: Path) -> dict[str, Path]:
    """SAM logical id → absolute local directory of its CodeUri/ContentUri."""
    dirs: dict[str, Path] = {}
    for logical_id, resource in sam.get("Resources", {}).items():
        properties = resource.get("Properties") or {}
        for key in ("CodeUri", "ContentUri"):
            uri = properties.get(key)
            if isinstance(uri, str) and not uri.startswith("s3://"):
                dirs[logical_id] = (base / uri).resolve()
    return dirs


def _is_image_function(resource: Mapping[str, Any]) -> bool:
    properties = resource.get("Properties") or {}
    return resource.get("Type") == "AWS::Serverless::Function" and properties.get("PackageType") == "Image"


def _stand_in_image_uri(logical_id: str) -> str:
    # An ECR-shaped URI (the account is a placeholder): nothing pulls it, the local runtime plays the Dockerfile.
    return f"000000000000.dkr.ecr.{DEFAULT_REGION}.amazonaws.com/{_LOCAL_IMAGE_REPOSITORY}:{logical_id}"


def _local_images(sam: Mapping[str, Any], base: Path) -> dict[str, ImageBuild]:
    """SAM logical id → its Dockerfile, read, for each container-image function built from one. As `sam
    build` reads Metadata: DockerContext is relative to the template's folder, Dockerfile to DockerContext."""
    images: dict[str, ImageBuild] = {}
    for logical_id, resource in sam.get("Resources", {}).items():
        metadata = resource.get("Metadata") or {}
        if not _is_image_function(resource) or not metadata.get("Dockerfile"):
            continue
        if not isinstance(metadata.get("DockerContext"), str):
            raise TemplateError(f"{logical_id}: Metadata.Dockerfile needs Metadata.DockerContext (as `sam build` does)")
        context = (base / metadata["DockerContext"]).resolve()
        images[logical_id] = read_dockerfile(context / str(metadata["Dockerfile"]), context)
    return images


@dataclass
class _Stage:
    """One build stage (FROM ... [AS name]) as far as it is read: its base image, WORKDIR and task-root copies."""

    base: str
    workdir: str
    copied: list[Path] = field(default_factory=list)


def read_dockerfile(dockerfile: Path, context: Path) -> ImageBuild:
    """The runtime and task-root directories of a Lambda Python image, from its Dockerfile: the final stage's
    base image (public.ecr.aws/lambda/python:<version>) and the local sources its COPY lines put into
    ${LAMBDA_TASK_ROOT} (/var/task, the base images' WORKDIR). A copied file puts its folder on the path.
    COPY --from copies what an earlier stage built (installed dependencies): locally, this virtualenv has them."""
    try:
        text = dockerfile.read_text(encoding="utf-8")
    except OSError as error:
        raise TemplateError(f"Dockerfile {dockerfile} cannot be read: {error.strerror or error}") from error
    named: dict[str, _Stage] = {}
    stage: _Stage | None = None
    for number, instruction, arguments in _dockerfile_instructions(text):
        where = f"{dockerfile}:{number}"
        if instruction == "FROM":
            words = [word for word in arguments.split() if not word.startswith("--")]
            if not words:
                raise TemplateError(f"{where}: FROM names no image")
            if words[0] in named:  # a stage built on an earlier one starts with what that one holds
                earlier = named[words[0]]
                stage = _Stage(earlier.base, earlier.workdir, list(earlier.copied))
            else:
                stage = _Stage(words[0], LAMBDA_TASK_ROOT if _LAMBDA_PYTHON_IMAGE.match(words[0]) else "/")
            if len(words) >= 3 and words[1].upper() == "AS":
                named[words[2]] = stage
        elif stage is None:
            continue  # an ARG before the first FROM
        elif instruction == "WORKDIR":
            stage.workdir = posixpath.normpath(posixpath.join(stage.workdir, _task_root_variable(arguments)))
        elif instruction in ("COPY", "ADD"):
            words = _copy_arguments(arguments, where)
            flags = [word for word in words if word.startswith("--")]
            paths = [word for word in words if not word.startswith("--")]
            if len(paths) < 2:
                raise TemplateError(f"{where}: {instruction} needs a source and a destination")
            destination = posixpath.normpath(posixpath.join(stage.workdir, _task_root_variable(paths[-1])))
            if destination != LAMBDA_TASK_ROOT or any(flag.startswith("--from") for flag in flags):
                continue
            if instruction == "ADD":
                raise TemplateError(f"{where}: ADD into the task root; the local runtime reads COPY lines only")
            for source in paths[:-1]:
                stage.copied.extend(_copy_sources(source, context, where))
    if stage is None:
        raise TemplateError(f"{dockerfile} has no FROM line")
    found = _LAMBDA_PYTHON_IMAGE.match(stage.base)
    if found is None:
        raise TemplateError(
            f"{dockerfile}: the image is built FROM {stage.base}; the local runtime plays AWS's Lambda Python "
            "base images only (public.ecr.aws/lambda/python:<version>), whose version names the runtime"
        )
    if not stage.copied:
        raise TemplateError(
            f"{dockerfile} copies nothing into ${{LAMBDA_TASK_ROOT}} ({LAMBDA_TASK_ROOT}): the local runtime "
            "imports the function's code from what the Dockerfile copies there (COPY <source> ${LAMBDA_TASK_ROOT})"
        )
    # The last copy wins in the image: first on the path; a folder copied twice counts where it was copied last.
    task_root_dirs = tuple(dict.fromkeys(reversed(stage.copied)))
    return ImageBuild(dockerfile, context, f"python{found.group(1)}", task_root_dirs)


def _dockerfile_instructions(text: str) -> Iterator[tuple[int, str, str]]:
    """(line number, INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    pending: list[str] = []
    start = 0
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue  # a comment inside a continued instruction
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending.append(stripped[:-1])
            continue
        pending.append(stripped)
        joined = " ".join(part.strip() for part in pending).strip()
        pending = []
        instruction, _, arguments = joined.partition(" ")
        yield start, instruction.upper(), arguments.strip()


def _copy_arguments(arguments: str, where: str) -> list[str]:
    if arguments.lstrip().startswith("["):  # the JSON form, COPY ["src", "dest"]
        try:
            words = json.loads(arguments)
        except ValueError as error:
            raise TemplateError(f"{where}: COPY {arguments} is not a JSON array") from error
        return [str(word) for word in words]
    flags = [word for word in arguments.split() if word.startswith("--")]
    rest = " ".join(word for word in arguments.split() if not word.startswith("--"))
    return [*flags, *shlex.split(rest)]


def _task_root_variable(path: str) -> str:
    return path.replace("${LAMBDA_TASK_ROOT}", LAMBDA_TASK_ROOT).replace("$LAMBDA_TASK_ROOT", LAMBDA_TASK_ROOT)


def _copy_sources(source: str, context: Path, where: str) -> list[Path]:
    """The local directories a COPY source puts on the import path: a directory itself, a file its folder."""
    matches = sorted(context.glob(source)) if any(c in source for c in "*?[") else [context / source]
    found = [match.resolve() for match in matches if match.exists()]
    if not found:
        raise TemplateError(f"{where}: COPY {source}: no such file or directory in the build context {context}")
    outside = [match for match in found if not match.is_relative_to(context)]
    if outside:
        raise TemplateError(f"{where}: COPY {source} is outside the build context {context}")
    return [match if match.is_dir() else match.parent for match in found]


def _image_build(logical_id: str, images: Mapping[str, ImageBuild]) -> ImageBuild:
    """The Dockerfile an image function is built from; its ImageUri, stand-in or given, is never pulled."""
    if logical_id not in images:
        raise TemplateError(
            f"{logical_id} is a container image without Metadata.Dockerfile; the local runtime needs the "
            "Dockerfile to know the function's code"
        )
    return images[logical_id]


def _artifact_dir(location: Any, local_dirs: Mapping[str, Path], what: str) -> Path:
    bucket, key = (location.get("S3Bucket"), location.get("S3Key")) if isinstance(location, dict) else (None, None)
    if bucket != _LOCAL_ARTIFACTS_BUCKET or not isinstance(key, str) or key not in local_dirs:
        raise TemplateError(f"{what} has no local CodeUri/ContentUri; the local runtime needs local code")
    return local_dirs[key]


def _maximum_concurrency(scaling: Any, parameters: Mapping[str, Any]) -> int | None:
    """An SQS mapping's ScalingConfig.MaximumConcurrency as a number (a literal or a Ref to a parameter,
    2 to 1000)."""
    if not scaling or "MaximumConcurrency" not in scaling:
        return None
    value = scaling["MaximumConcurrency"]
    if isinstance(value, dict) and set(value) == {"Ref"} and value["Ref"] in parameters:
        value = parameters[value["Ref"]]
    if isinstance(value, bool) or not isinstance(value, int | str) or not str(value).isdigit():
        raise TemplateError(f"ScalingConfig.MaximumConcurrency must be a number, not {value!r}")
    if not 2 <= int(value) <= 1000:
        raise TemplateError(f"ScalingConfig.MaximumConcurrency is {value}; Lambda accepts 2 to 1000")
    return int(value)


def _describe_function(
    logical_id: str,
    resources: Mapping[str, Any],
    local_dirs: Mapping[str, Path],
    images: Mapping[str, ImageBuild],
    parameters: Mapping[str, Any] | None = None,
) -> FunctionSpec:
    properties = resources[logical_id]["Properties"]
    layer_dirs: list[Path] = []
    for layer in properties.get("Layers", []):
        layer_id = layer.get("Ref") if isinstance(layer, dict) else None
        if not isinstance(layer_id, str) or resources.get(layer_id, {}).get("Type") != "AWS::Lambda::LayerVersion":
            raise TemplateError(f"{logical_id}: layer {layer!r} is not a layer of this template")
        layer_dirs.append(_artifact_dir(resources[layer_id]["Properties"]["Content"], local_dirs, layer_id))

    sqs_sources: list[SqsEventSource] = []
    kinesis_sources: list[KinesisEventSource] = []
    url_auth: str | None = None
    for other_id, resource in resources.items():
        other = resource.get("Properties") or {}
        if resource["Type"] == "AWS::Lambda::EventSourceMapping" and other.get("FunctionName") == {"Ref": logical_id}:
            queue = other.get("EventSourceArn", {}).get("Fn::GetAtt", [None])[0]
            source_type = resources.get(queue, {}).get("Type") if isinstance(queue, str) else None
            if source_type == "AWS::Kinesis::Stream":
                kinesis = _kinesis_source(other_id, other, resources, parameters or {})
                if kinesis is not None:
                    kinesis_sources.append(kinesis)
                continue
            if source_type != "AWS::SQS::Queue":
                raise TemplateError(
                    f"{other_id}: only SQS queues and Kinesis data streams of this template are supported "
                    "as event sources"
                )
            sqs_sources.append(
                SqsEventSource(
                    logical_id=other_id,
                    queue_logical_id=queue,
                    batch_size=int(other.get("BatchSize", 10)),
                    maximum_batching_window_s=int(other.get("MaximumBatchingWindowInSeconds", 0)),
                    report_batch_item_failures="ReportBatchItemFailures" in other.get("FunctionResponseTypes", []),
                    maximum_concurrency=_maximum_concurrency(other.get("ScalingConfig"), parameters or {}),
                )
            )
        elif resource["Type"] == "AWS::Lambda::Url" and other.get("TargetFunctionArn") == {"Ref": logical_id}:
            url_auth = str(other.get("AuthType", "AWS_IAM"))

    image: ImageBuild | None = None
    if properties.get("PackageType") == "Image":
        image = _image_build(logical_id, images)
        command = (properties.get("ImageConfig") or {}).get("Command")
        if not isinstance(command, list) or not command or not isinstance(command[0], str):
            raise TemplateError(
                f"{logical_id}: a container image function needs ImageConfig.Command: [module.function], "
                "the handler the local runtime imports (the Dockerfile's CMD is not read)"
            )
        handler, runtime, code_dir = command[0], image.runtime, image.task_root_dirs[0]
    else:
        handler = str(properties["Handler"])
        runtime = str(properties.get("Runtime", ""))
        code_dir = _artifact_dir(properties["Code"], local_dirs, logical_id)

    return FunctionSpec(
        logical_id=logical_id,
        handler=handler,
        runtime=runtime,
        code_dir=code_dir,
        layer_dirs=tuple(layer_dirs),
        environment=dict(properties.get("Environment", {}).get("Variables", {})),
        # Lambda's defaults when the template leaves them out.
        timeout_s=int(properties.get("Timeout", 3)),
        memory_mb=int(properties.get("MemorySize", 128)),
        sqs_sources=tuple(sqs_sources),
        function_url_auth=url_auth,
        image=image,
        kinesis_sources=tuple(kinesis_sources),
    )


# Kinesis mapping settings that change what is delivered or when; played wrong they would mislead, so refused.
_UNPLAYED_KINESIS_SETTINGS = ("FilterCriteria", "TumblingWindowInSeconds", "MaximumRecordAgeInSeconds")


def _kinesis_source(
    logical_id: str, properties: Mapping[str, Any], resources: Mapping[str, Any], parameters: Mapping[str, Any]
) -> KinesisEventSource | None:
    """A Kinesis mapping as the local poller plays it (None when Enabled is false); Lambda's defaults where
    the template leaves a setting out."""
    if str(_parameter_value(properties.get("Enabled", True), parameters)).lower() == "false":
        logger.info("%s is disabled (Enabled: false): nothing polls its stream", logical_id)
        return None
    unplayed = [name for name in _UNPLAYED_KINESIS_SETTINGS if name in properties]
    if unplayed:
        raise TemplateError(f"{logical_id}: {', '.join(unplayed)} on a Kinesis event source is not played locally")
    parallelization = _kinesis_integer(logical_id, properties, "ParallelizationFactor", 1, parameters)
    if parallelization != 1:
        # One batch per shard at a time keeps a shard's records in order; several would need per-key ordering.
        raise TemplateError(
            f"{logical_id}: ParallelizationFactor is {parallelization}; the local runtime plays 1 only "
            "(one batch per shard at a time)"
        )
    position = str(_parameter_value(properties.get("StartingPosition"), parameters))
    if position not in ("LATEST", "TRIM_HORIZON", "AT_TIMESTAMP"):
        raise TemplateError(
            f"{logical_id}: StartingPosition must be LATEST, TRIM_HORIZON or AT_TIMESTAMP, not {position}"
        )
    timestamp = properties.get("StartingPositionTimestamp")
    if position == "AT_TIMESTAMP" and timestamp is None:
        raise TemplateError(f"{logical_id}: StartingPosition AT_TIMESTAMP needs StartingPositionTimestamp")
    batch_size = _kinesis_integer(logical_id, properties, "BatchSize", 100, parameters)
    window_s = _kinesis_integer(logical_id, properties, "MaximumBatchingWindowInSeconds", 0, parameters)
    retries = _kinesis_integer(logical_id, properties, "MaximumRetryAttempts", -1, parameters)
    if not 1 <= batch_size <= 10000 or not 0 <= window_s <= 300 or not -1 <= retries <= 10000:
        raise TemplateError(
            f"{logical_id}: BatchSize {batch_size}, MaximumBatchingWindowInSeconds {window_s} or "
            f"MaximumRetryAttempts {retries} is out of Lambda's range (1-10000, 0-300, -1-10000)"
        )
    on_failure = ((properties.get("DestinationConfig") or {}).get("OnFailure") or {}).get("Destination")
    queue = on_failure.get("Fn::GetAtt", [None])[0] if isinstance(on_failure, dict) else None
    is_queue = isinstance(queue, str) and resources.get(queue, {}).get("Type") == "AWS::SQS::Queue"
    if on_failure is not None and not is_queue:
        raise TemplateError(f"{logical_id}: an OnFailure destination must be an SQS queue of this template locally")
    return KinesisEventSource(
        logical_id=logical_id,
        stream_logical_id=str(properties["EventSourceArn"]["Fn::GetAtt"][0]),
        starting_position=position,
        batch_size=batch_size,
        maximum_batching_window_s=window_s,
        maximum_retry_attempts=retries,
        bisect_batch_on_function_error=str(properties.get("BisectBatchOnFunctionError", False)).lower() == "true",
        report_batch_item_failures="ReportBatchItemFailures" in properties.get("FunctionResponseTypes", []),
        starting_position_timestamp=float(timestamp) if timestamp is not None else None,
        on_failure_queue_logical_id=queue,
    )


def _parameter_value(value: Any, parameters: Mapping[str, Any]) -> Any:
    """A literal, or the value of the parameter a Ref names."""
    if isinstance(value, dict) and set(value) == {"Ref"} and value["Ref"] in parameters:
        return parameters[value["Ref"]]
    return value


def _kinesis_integer(
    logical_id: str, properties: Mapping[str, Any], name: str, default: int, parameters: Mapping[str, Any]
) -> int:
    value = _parameter_value(properties.get(name, default), parameters)
    if isinstance(value, bool) or not isinstance(value, int | str) or not str(value).lstrip("-").isdigit():
        raise TemplateError(f"{logical_id}: {name} must be a number, not {value!r}")
    return int(value)
