"""Probing a stored video and sampling its frames (PyAV).

Timestamps come from each frame's pts and its stream's time_base, counted from the stream's first frame:
a video may have a variable frame rate, so a frame's index times the frame rate would drift."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import av.error
import numpy as np

from candor.core import settings
from candor.core.errors import InvalidVideoError, VideoTooLargeError

# Demuxers of still images: FFmpeg opens a JPEG or PNG as a one-frame "video".
_IMAGE_FORMATS = ("image2", "_pipe")
# Decoding that stops this much before the declared duration means the file was cut short.
_TRUNCATION_SLACK_MS = 500


@dataclass(frozen=True)
class VideoLimits:
    max_bytes: int = settings.MAX_VIDEO_BYTES
    max_duration_ms: int = settings.MAX_VIDEO_DURATION_MS
    max_frame_pixels: int = settings.MAX_VIDEO_FRAME_PIXELS


@dataclass(frozen=True)
class VideoMetadata:
    """What Rekognition Video reports as VideoMetadata."""

    codec: str
    duration_ms: int
    format: str
    frame_rate: float
    width: int
    height: int

    def to_rekognition(self) -> dict[str, object]:
        return {
            "Codec": self.codec,
            "DurationMillis": self.duration_ms,
            "Format": self.format,
            "FrameRate": self.frame_rate,
            "FrameWidth": self.width,
            "FrameHeight": self.height,
        }


@dataclass(frozen=True)
class VideoFrame:
    timestamp_ms: int
    image: np.ndarray  # RGB uint8, height x width x 3


def probe_video(path: str | Path, limits: VideoLimits = VideoLimits()) -> VideoMetadata:
    """The video's metadata; raises InvalidVideoError or VideoTooLargeError for a file we will not process."""
    container = _open(Path(path), limits)
    try:
        return _metadata(container, limits)
    finally:
        container.close()


def sample_frames(
    path: str | Path,
    interval_ms: int = settings.VIDEO_SAMPLE_INTERVAL_MS,
    start_ms: int = 0,
    end_ms: int | None = None,
    limits: VideoLimits = VideoLimits(),
) -> Iterator[VideoFrame]:
    """The first frame at or after each multiple of `interval_ms` within [start_ms, end_ms) (the whole video
    when `end_ms` is None). The grid starts at the video's start, so segments sample what the whole would."""
    if interval_ms <= 0:
        raise ValueError("interval_ms must be positive")
    container = _open(Path(path), limits)
    try:
        metadata = _metadata(container, limits)
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        time_base = stream.time_base or Fraction(1, 1000)
        origin = stream.start_time or 0
        next_sample = -(-max(start_ms, 0) // interval_ms) * interval_ms
        if next_sample > 0:
            _seek(container, stream, origin + int(next_sample / 1000 / time_base))
        last_ms: int | None = None
        try:
            for frame in container.decode(stream):
                if frame.pts is None:
                    continue
                timestamp_ms = round(float((frame.pts - origin) * time_base) * 1000)
                last_ms = timestamp_ms
                if end_ms is not None and timestamp_ms >= end_ms:
                    return
                if timestamp_ms < next_sample:
                    continue
                yield VideoFrame(timestamp_ms, frame.to_ndarray(format="rgb24"))
                next_sample = (timestamp_ms // interval_ms + 1) * interval_ms
        except av.error.FFmpegError as error:
            raise InvalidVideoError(
                f"The video is damaged or truncated: decoding stopped after {last_ms or 0} ms ({error.strerror})."
            ) from error
        declared_end = metadata.duration_ms - _TRUNCATION_SLACK_MS - 2 * 1000 / max(metadata.frame_rate, 1.0)
        if last_ms is None or last_ms < declared_end:
            raise InvalidVideoError(
                f"The video is truncated: it declares {metadata.duration_ms} ms but its frames end at "
                f"{last_ms or 0} ms."
            )
    finally:
        container.close()


def _open(path: Path, limits: VideoLimits) -> av.container.InputContainer:
    try:
        size = os.path.getsize(path)
    except OSError as error:
        raise InvalidVideoError(f"The video {path.name} cannot be read: {error.strerror}.") from error
    if size == 0:
        raise InvalidVideoError(f"The video {path.name} is empty (0 bytes).")
    if size > limits.max_bytes:
        raise VideoTooLargeError(f"The video is {size:,} bytes; the limit is {limits.max_bytes:,} bytes.")
    try:
        container = av.open(str(path), mode="r")
    except (av.error.FFmpegError, UnicodeDecodeError) as error:
        raise InvalidVideoError(
            f"{path.name} is not a video in a format we can read (it may be truncated or not a video at all)."
        ) from error
    if any(part in container.format.name for part in _IMAGE_FORMATS):
        container.close()
        raise InvalidVideoError(f"{path.name} is a still image ({container.format.long_name}), not a video.")
    if not container.streams.video:
        container.close()
        raise InvalidVideoError(f"{path.name} has no video stream.")
    return container


def _metadata(container: av.container.InputContainer, limits: VideoLimits) -> VideoMetadata:
    stream = container.streams.video[0]
    codec = stream.codec_context.name
    if codec not in settings.VIDEO_CODECS:
        raise InvalidVideoError(
            f"The video's codec {codec} is not supported; use one of {', '.join(settings.VIDEO_CODECS)}."
        )
    width, height = stream.codec_context.width, stream.codec_context.height
    if width <= 0 or height <= 0:
        raise InvalidVideoError("The video has no frames with a size.")
    if width * height > limits.max_frame_pixels:
        raise VideoTooLargeError(
            f"The video's frames are {width}x{height}; the limit is {limits.max_frame_pixels:,} pixels a frame."
        )
    duration_ms = _duration_ms(container, stream)
    if duration_ms <= 0:
        raise InvalidVideoError("The video has zero length.")
    if duration_ms > limits.max_duration_ms:
        raise VideoTooLargeError(
            f"The video lasts {duration_ms / 1000:.1f} s; the limit is {limits.max_duration_ms / 1000:.1f} s."
        )
    rate = stream.average_rate or stream.guessed_rate
    return VideoMetadata(
        codec=codec,
        duration_ms=duration_ms,
        format=container.format.long_name,
        frame_rate=round(float(rate), 3) if rate else 0.0,
        width=width,
        height=height,
    )


def _duration_ms(container: av.container.InputContainer, stream: av.VideoStream) -> int:
    if stream.duration and stream.time_base:
        return round(float(stream.duration * stream.time_base) * 1000)
    if container.duration:
        return round(container.duration / 1000)  # microseconds
    return 0


def _seek(container: av.container.InputContainer, stream: av.VideoStream, pts: int) -> None:
    """To the keyframe at or before `pts`; a stream that cannot seek is decoded from its start instead."""
    try:
        container.seek(pts, stream=stream, backward=True, any_frame=False)
    except av.error.FFmpegError:
        container.seek(0, stream=stream)
