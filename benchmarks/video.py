"""`candor bench video` (or `python -m benchmarks.video`): stored-video face search through the local runtime.

Each shared sample video (../shared/data/video), one 720p clip made here by upscaling the two-person GIF
to 1280x720 H.264 MP4 with PyAV (at the GIF's own frame times) and one 60 s clip of it at 480x270 (played
to and fro), is uploaded under videos/ as a face search
job in an empty collection, as `candor video --collection` does; GetFaceSearch is polled every 0.1 s until
the job is SUCCEEDED. Reported per video: the time from the start of the upload to SUCCEEDED, seconds of
video analysed per second of that time (the target: at least 3x real time for the 480x270 samples), and
tracking quality: the persons (Person.Index) found against the people known to be in the video. "Extra
persons" is persons found minus people present: each is a person the tracker split in two (or a face it
found that is not there); face-demographics-walking.gif shows an unknown number of passers-by, so only
the persons found are given. One job on the shortest clip runs first as a warm-up and is not counted (it
loads the models in the video function's instances).

Writes the "Video" section of docs/benchmarks.md only when every job SUCCEEDED. Sample videos by Intel
Corporation, CC BY 4.0.
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import math
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEFAULT_VIDEOS = REPO.parent / "shared" / "data" / "video"
DEFAULT_OUTPUT = REPO / "docs" / "benchmarks.md"
SECTION = "Video"
COLLECTION = "video-bench"
POLL_S = 0.1
JUMP = 0.25  # of the frame (its width and height are 1 in Rekognition's boxes)
TARGET_REAL_TIME = 3.0  # the target for the 480x270 samples
# People present in each sample (None: not known).
PEOPLE = {
    "head-pose-face-detection-female.gif": 1,
    "head-pose-face-detection-female-and-male.gif": 2,
    "face-demographics-walking.gif": None,
    "again.mkv": 1,
    "book.mkv": 1,
    "help.mkv": 1,
    "thanks.mkv": 1,
}
UPSCALED_SOURCE = "head-pose-face-detection-female-and-male.gif"
UPSCALED_NAME = "head-pose-face-detection-female-and-male-720p.mp4"
# A longer clip of the same people at 480x270: the speed of analysis once a job's fixed costs are spread.
LOOPED_NAME = "head-pose-face-detection-female-and-male-60s.mp4"
LOOPED_SECONDS = 60.0
CREDIT = "Sample videos by Intel Corporation, CC BY 4.0."


@dataclass(frozen=True)
class Clip:
    path: Path
    people: int | None
    made: str = ""  # how the clip was made, when it is not a shared sample


def register(bench_subparsers: Any) -> None:
    parser = bench_subparsers.add_parser(
        "video", help="stored-video face search: speed against real time and persons found, on the sample videos"
    )
    _arguments(parser)
    parser.set_defaults(run=cmd_video)


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--videos", type=Path, default=DEFAULT_VIDEOS, help="the sample videos")
    parser.add_argument("--timeout", type=float, default=900, help="seconds to wait for each job")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="the Markdown file to update")
    parser.add_argument("--no-write", action="store_true", help="leave the Markdown file alone")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON object")


def cmd_video(args: argparse.Namespace) -> int:
    from candor.adapters.aws import DynamoVideoJobRepository
    from candor_local.cli.client import client_for
    from candor_local.emulator.runtime import LocalEnvironment
    from candor_local.packaging.models import ensure_models

    missing = [name for name in PEOPLE if not (args.videos / name).is_file()]
    if missing:
        raise FileNotFoundError(f"sample videos missing from {args.videos}: {', '.join(missing)}")
    work = Path(tempfile.mkdtemp(prefix="candor-bench-video-"))
    clips = [Clip(args.videos / name, people) for name, people in PEOPLE.items()]
    upscaled = upscale(args.videos / UPSCALED_SOURCE, work / UPSCALED_NAME, 1280, 720)
    clips.append(Clip(upscaled, PEOPLE[UPSCALED_SOURCE], made=f"{UPSCALED_SOURCE} upscaled to 1280x720 H.264"))
    long_clip = looped(args.videos / UPSCALED_SOURCE, work / LOOPED_NAME, LOOPED_SECONDS)
    clips.append(
        Clip(long_clip, PEOPLE[UPSCALED_SOURCE], made=f"{UPSCALED_SOURCE} played to and fro for {LOOPED_SECONDS:g} s")
    )
    logs = work / "logs"
    with LocalEnvironment.start(stack_name="candor-bench-video", model_dir=ensure_models(), log_dir=logs) as env:
        client = client_for(env)
        client.ensure_collection(COLLECTION)
        shortest = min((clip for clip in clips if not clip.made), key=lambda clip: clip.path.stat().st_size)
        run_job(client, shortest, args.timeout, None)  # warm-up, not counted
        # The job's own record says when VideoFunction took it and when it ended: the analysis alone.
        jobs = DynamoVideoJobRepository(
            env.resources["VideoJobsTable"], env.session.resource("dynamodb", endpoint_url=env.stack.endpoint.url)
        )
        runs = [run_job(client, clip, args.timeout, jobs) for clip in clips]
        parameters = env.template.parameter_defaults
        instances = len(env.worker_pids("VideoFunction"))
    result = {
        "runs": runs,
        "sample_interval_ms": int(parameters.get("VideoSampleIntervalMs", 0)) or None,
        "segment_seconds": int(parameters.get("VideoSegmentSeconds", 0)) or None,
        "video_function_instances": instances,
        "segment_workers": int(parameters.get("VideoSegmentWorkers", 1)),
        "target_real_time": TARGET_REAL_TIME,
        "small_samples_meet_target": all(
            run.get("real_time", 0.0) >= TARGET_REAL_TIME
            for run in runs
            if run["status"] == "SUCCEEDED" and run["height"] <= 270
        ),
        "all_succeeded": all(run["status"] == "SUCCEEDED" for run in runs),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "date": datetime.date.today().isoformat(),
        "logs": str(logs),
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(_markdown(result))
    if not args.no_write and result["all_succeeded"]:
        from benchmarks.report import replace_section

        document = args.output.read_text(encoding="utf-8") if args.output.is_file() else None
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(replace_section(document, SECTION, _markdown(result)), encoding="utf-8")
    elif not result["all_succeeded"]:
        print(f"not every job SUCCEEDED: {args.output} left alone; logs in {logs}", file=sys.stderr)
    return 0 if result["all_succeeded"] else 1


def run_job(client: Any, clip: Clip, timeout_s: float, jobs: Any) -> dict[str, Any]:
    """Upload the clip as a face search job and time it from the upload's start to SUCCEEDED, and (from the
    job's record in `jobs`, a VideoJobRepository) from VideoFunction taking the job to its end."""
    from candor_local.cli import video

    started = time.monotonic()
    job = video.upload_video(client, clip.path, COLLECTION)
    final = video.wait_for_job(client, job, timeout_s, poll_s=POLL_S)
    elapsed = time.monotonic() - started
    metadata = final.get("VideoMetadata") or {}
    run: dict[str, Any] = {
        "video": clip.path.name,
        "made": clip.made,
        "status": final.get("JobStatus"),
        "width": metadata.get("FrameWidth"),
        "height": metadata.get("FrameHeight"),
        "codec": metadata.get("Codec"),
        "duration_s": round(metadata.get("DurationMillis", 0) / 1000, 2),
        "elapsed_s": round(elapsed, 2),
        "people_present": clip.people,
    }
    run["upload_real_time"] = round(run["duration_s"] / elapsed, 2) if elapsed > 0 else 0.0
    recorded = jobs.get(job.job_id) if jobs is not None else None
    if recorded is not None and recorded.completed_at:
        taken, ended = (datetime.datetime.fromisoformat(t) for t in (recorded.created_at, recorded.completed_at))
        job_s = (ended - taken).total_seconds()
        run["job_s"] = round(job_s, 2)
        run["real_time"] = round(run["duration_s"] / job_s, 2) if job_s > 0 else 0.0
    if run["status"] != "SUCCEEDED":
        run["status_message"] = final.get("StatusMessage")
        return run
    pages = video.result_pages(client, job)
    persons = video.summarise_persons(pages)
    run["persons_found"] = len(persons)
    run["index_jumps"] = index_jumps(pages)
    run["samples_per_person"] = [person["samples"] for person in persons]
    run["extra_persons"] = None if clip.people is None else len(persons) - clip.people
    return run


def index_jumps(pages: list[dict[str, Any]]) -> int:
    """Times a Person.Index's face moves more than JUMP of the frame between two of its samples in a row. The
    people in the samples move far less than that in 0.2 s, so each jump is the Index passing from one person
    to another (an Index switch) without anyone new being counted."""
    boxes: dict[int, list[tuple[int, dict[str, float]]]] = {}
    for page in pages:
        for entry in page.get("Persons", []):
            box = entry["Person"].get("BoundingBox")
            if box:
                boxes.setdefault(int(entry["Person"]["Index"]), []).append((int(entry["Timestamp"]), box))
    jumps = 0
    for samples in boxes.values():
        samples.sort(key=lambda sample: sample[0])
        for (_, before), (_, after) in itertools.pairwise(samples):
            dx = (after["Left"] + after["Width"] / 2) - (before["Left"] + before["Width"] / 2)
            dy = (after["Top"] + after["Height"] / 2) - (before["Top"] + before["Height"] / 2)
            jumps += math.hypot(dx, dy) > JUMP
    return jumps


def upscale(source: Path, target: Path, width: int, height: int) -> Path:
    """`source` resized to width x height, H.264 in MP4, each frame at its own time."""
    import av

    target.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(source)) as reader, av.open(str(target), mode="w") as writer:
        stream = reader.streams.video[0]
        time_base = stream.time_base
        if time_base is None:
            raise ValueError(f"{source} has no time base: its frames have no times to keep")
        encoder = writer.add_stream(
            "libx264", rate=stream.average_rate or 25, options={"preset": "veryfast", "crf": "20"}
        )
        encoder.width, encoder.height, encoder.pix_fmt = width, height, "yuv420p"
        encoder.time_base = encoder.codec_context.time_base = time_base
        origin = stream.start_time or 0
        for frame in reader.decode(stream):
            resized = frame.reformat(width=width, height=height, format="yuv420p", interpolation="BICUBIC")
            resized.pts, resized.time_base = (frame.pts or 0) - origin, time_base
            writer.mux(encoder.encode(resized))
        writer.mux(encoder.encode())
    return target


def looped(source: Path, target: Path, seconds: float) -> Path:
    """`source` played forwards then backwards (so nobody jumps) until it lasts `seconds`, H.264 in MP4 at
    its own size and average frame rate: a longer video of the same people."""
    import av

    with av.open(str(source)) as reader:
        stream = reader.streams.video[0]
        rate = stream.average_rate or 25
        frames = [frame.to_ndarray(format="rgb24") for frame in reader.decode(stream)]
    height, width = frames[0].shape[:2]
    wanted = math.ceil(seconds * float(rate))
    sequence: list[Any] = []
    while len(sequence) < wanted:
        sequence.extend(frames if len(sequence) // len(frames) % 2 == 0 else frames[::-1])
    with av.open(str(target), mode="w") as writer:
        encoder = writer.add_stream("libx264", rate=rate, options={"preset": "veryfast", "crf": "20"})
        encoder.width, encoder.height, encoder.pix_fmt = width - width % 2, height - height % 2, "yuv420p"
        for pixels in sequence[:wanted]:
            frame = av.VideoFrame.from_ndarray(pixels[: encoder.height, : encoder.width], format="rgb24")
            writer.mux(encoder.encode(frame.reformat(format="yuv420p")))
        writer.mux(encoder.encode())
    return target


def _markdown(result: dict[str, Any]) -> str:
    rows = []
    for run in result["runs"]:
        size = f"{run['width']}x{run['height']}" if run.get("width") else "?"
        name = f"`{run['video']}`" + (f" ({run['made']})" if run["made"] else "")
        if run["status"] != "SUCCEEDED":
            rows.append(
                f"| {name} | {size} | {run['duration_s']} s | {run['status']}: {run.get('status_message')} "
                "| | | | | | | |"
            )
            continue
        present = "not known" if run["people_present"] is None else run["people_present"]
        extra = "" if run["extra_persons"] is None else f"{run['extra_persons']:+d}"
        rows.append(
            f"| {name} | {size} | {run['duration_s']} s | {run.get('job_s')} s | {run.get('real_time')}x | "
            f"{run['elapsed_s']} s | {run['upload_real_time']}x | "
            f"{run['persons_found']} | {present} | {extra} | {run['index_jumps']} |"
        )
    small = [r for r in result["runs"] if r["status"] == "SUCCEEDED" and (r.get("height") or 0) <= 270]
    verdict = (
        f"every 480x270 sample at least {TARGET_REAL_TIME:g}x real time"
        if result["small_samples_meet_target"]
        else f"target of {TARGET_REAL_TIME:g}x real time missed by "
        + ", ".join(f"{r['video']} ({r.get('real_time')}x)" for r in small if r.get("real_time", 0) < TARGET_REAL_TIME)
    )
    sampling = f"{result['sample_interval_ms']} ms" if result["sample_interval_ms"] else "the template's default"
    return f"""\
`candor bench video` (or `python -m benchmarks.video`): each sample video uploaded under `videos/` as a face
search job in an empty collection (as `candor video VIDEO --collection C` does) on the embedded emulator, one
job at a time, then GetFaceSearch polled every {POLL_S} s until SUCCEEDED. Sampling at the default
({sampling}), segments of {result["segment_seconds"]} s, {result["video_function_instances"]} VideoFunction
instance(s); a warm-up job first, not counted. {result["date"]}, {result["machine"]}.

| video | size | length | job | video s per job s | upload to end | video s per s | persons | people | extra | jumps |
| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |
{chr(10).join(rows)}

Outcome (video seconds per job second): {verdict}. "Job" is the time from VideoFunction taking the job (its
record's creation) to its end (probing, the segments, the merge, the results written): the seconds of video
processed per second of wall time. "Upload to end" adds what a caller waits besides: the upload, the detect
stage handing it on, the queues, and the polling; on clips this short (1.7-4.7 s) those fixed costs weigh
on the ratio, which the 60 s clip spreads. A video shorter than {result["segment_workers"]} segments is
shared among the {result["segment_workers"]} segment workers (segments of 1 s at least). "Persons" is the
Person.Index values found; "extra" is persons found minus the people known to be in the video: each extra
one is a person split in two by the tracker, or a face found that is not there. "Jumps" counts the times a
Person.Index's face moves more than {JUMP:g} of the frame between two of its samples in a row, far more
than anyone in these clips moves in {result["sample_interval_ms"]} ms: each is an Index passing from one
person to another (a switch) without anyone new being counted. The 720p clip is the two-person GIF
upscaled with PyAV (bicubic), so it has the GIF's content and frame times at 1280x720.

{CREDIT}
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.video", description=__doc__)
    _arguments(parser)
    return cmd_video(parser.parse_args(argv))


if __name__ == "__main__":
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    sys.exit(main())
