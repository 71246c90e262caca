"""Real videos for the video tests, made from the shared samples (sample videos by Intel Corporation, CC BY 4.0)."""

from __future__ import annotations

from pathlib import Path

import av

ROOT = Path(__file__).resolve().parents[1]
VIDEOS = ROOT.parent / "shared" / "data" / "video"
TWO_PEOPLE = VIDEOS / "head-pose-face-detection-female-and-male.gif"
ONE_PERSON = VIDEOS / "head-pose-face-detection-female.gif"
SIGNING = VIDEOS / "again.mkv"


def as_mp4(source_path: Path, target_path: Path, plays: int = 1) -> Path:
    """The clip as H.264 in MP4 at 25 frames/s, played `plays` times, forwards then backwards (so the people
    never jump): a longer video of the same people, split into several segments."""
    with av.open(str(source_path)) as source:
        frames = [frame.to_ndarray(format="rgb24") for frame in source.decode(video=0)]
    height, width = frames[0].shape[:2]
    with av.open(str(target_path), mode="w") as target:
        stream = target.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = width - width % 2, height - height % 2, "yuv420p"
        sequence = [frame for play in range(plays) for frame in (frames if play % 2 == 0 else frames[::-1])]
        for pixels in sequence:
            frame = av.VideoFrame.from_ndarray(pixels[: stream.height, : stream.width], format="rgb24")
            target.mux(stream.encode(frame.reformat(format="yuv420p")))
        target.mux(stream.encode())
    return target_path


def jpeg_frames(path: Path, every: int = 1) -> list[bytes]:
    """Every `every`-th frame of a video, each as a JPEG (quality 90): the frames a camera gateway would send."""
    import io

    import av

    with av.open(str(path)) as video:
        images = [frame.to_image() for frame in video.decode(video=0)][::every]
    encoded = []
    for image in images:
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=90)
        encoded.append(buffer.getvalue())
    return encoded
