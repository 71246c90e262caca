"""`candor video --annotate`: a copy of a video with the faces a job found boxed and labelled on every frame.

A job reports faces only at its sampled frames; between samples each person's last box is held, so the box
moves at the person's next sample, and it goes when the person has not been seen for more than two sample
intervals. Frame times are each frame's pts from the stream's first frame, as the sampler counts them
(candor/video/frames.py), so a box is drawn on the frame it was found in. The copy is H.264 in MP4 at the
source's frame times; an odd width or height loses its last column or row (H.264's 4:2:0 needs even sizes).
"""

from __future__ import annotations

from bisect import bisect_right
from collections import defaultdict
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from itertools import pairwise
from pathlib import Path
from statistics import median

import av
from PIL import Image, ImageDraw, ImageFont

from candor.core.settings import VIDEO_SAMPLE_INTERVAL_MS

# A box is held this many sample intervals after the person's last sample, then dropped.
HOLD_INTERVALS = 2
# One colour per person (by Index, cycling); detection-only boxes take the first.
PALETTE = (
    (40, 220, 90),
    (255, 170, 0),
    (60, 160, 255),
    (240, 80, 200),
    (250, 240, 60),
    (0, 220, 220),
    (255, 90, 70),
    (170, 130, 255),
)


@dataclass(frozen=True)
class Sighting:
    """A face at one sampled frame: its box (ratios of the frame, as the API gives them) and its label.
    `track` is the person's Index; faces of a detection job have none and are held together, per sample."""

    timestamp_ms: int
    box: dict[str, float]
    label: str = ""
    track: int | None = None


@dataclass(frozen=True)
class Annotated:
    path: Path
    frames: int
    width: int
    height: int


def sample_interval_ms(timestamps: Iterable[int], default: int = VIDEO_SAMPLE_INTERVAL_MS) -> int:
    """The job's sampling interval, read off the sampled times: the median gap between consecutive distinct
    times, of the gaps up to 1.5 times the shortest. A sample lands on the first frame at or after its mark,
    so single gaps vary by up to a frame; a stretch where nobody is seen leaves a gap of several intervals."""
    times = sorted(set(timestamps))
    gaps = [later - earlier for earlier, later in pairwise(times)]
    if not gaps:
        return default
    usual = [gap for gap in gaps if gap <= 1.5 * min(gaps)]
    return max(1, round(median(usual)))


class BoxSchedule:
    """Which sightings to draw at a moment: for each track, those of its latest sample at or before it,
    while that sample is at most `hold_ms` old."""

    def __init__(self, sightings: Iterable[Sighting], hold_ms: int) -> None:
        self.hold_ms = hold_ms
        by_key: dict[Hashable, dict[int, list[Sighting]]] = defaultdict(lambda: defaultdict(list))
        for sighting in sightings:
            key = ("person", sighting.track) if sighting.track is not None else ("faces",)
            by_key[key][sighting.timestamp_ms].append(sighting)
        self._tracks = [(sorted(samples), samples) for samples in by_key.values()]

    def at(self, timestamp_ms: int) -> list[Sighting]:
        shown: list[Sighting] = []
        for times, samples in self._tracks:
            position = bisect_right(times, timestamp_ms) - 1
            if position >= 0 and timestamp_ms - times[position] <= self.hold_ms:
                shown.extend(samples[times[position]])
        return shown


def annotate_video(source: Path, out: Path, sightings: Sequence[Sighting], interval_ms: int | None = None) -> Annotated:
    """Write `out` (H.264 MP4): every frame of `source` with the boxes `sightings` hold at its time."""
    interval = interval_ms or sample_interval_ms(s.timestamp_ms for s in sightings)
    schedule = BoxSchedule(sightings, HOLD_INTERVALS * interval)
    out.parent.mkdir(parents=True, exist_ok=True)
    frames = 0
    with av.open(str(source)) as reader, av.open(str(out), mode="w") as writer:
        stream = reader.streams.video[0]
        stream.thread_type = "AUTO"
        time_base = stream.time_base or Fraction(1, 1000)
        rate = stream.average_rate or stream.guessed_rate or Fraction(25)
        origin = stream.start_time or 0
        width, height = stream.codec_context.width // 2 * 2, stream.codec_context.height // 2 * 2
        if width == 0 or height == 0:
            raise ValueError(f"{source} has frames too small to encode ({width}x{height})")
        encoder = writer.add_stream("libx264", rate=rate, options={"preset": "veryfast", "crf": "20"})
        encoder.width, encoder.height, encoder.pix_fmt = width, height, "yuv420p"
        # The source's time base for the codec too, so variable frame times are kept, not rounded to `rate`.
        encoder.time_base = encoder.codec_context.time_base = time_base
        painter = _Painter(stream.codec_context.width, stream.codec_context.height)
        step = max(1, round(1 / (rate * time_base)))
        last_pts: int | None = None
        for frame in reader.decode(stream):
            # A frame without a pts (rare, broken timing) takes the next slot after the last one.
            pts = frame.pts - origin if frame.pts is not None else (last_pts + step if last_pts is not None else 0)
            if last_pts is not None and pts <= last_pts:
                pts = last_pts + 1  # the muxer refuses times that do not increase
            last_pts = pts
            timestamp_ms = round(float(pts * time_base) * 1000)
            image = painter.draw(frame.to_image(), schedule.at(timestamp_ms))
            if image.size != (width, height):
                image = image.crop((0, 0, width, height))
            picture = av.VideoFrame.from_image(image).reformat(format="yuv420p")
            picture.pts, picture.time_base = pts, time_base
            writer.mux(encoder.encode(picture))
            frames += 1
        writer.mux(encoder.encode())
    return Annotated(out, frames, width, height)


class _Painter:
    """Boxes and labels sized to the frame; the font is loaded once per video, not per frame."""

    def __init__(self, width: int, height: int) -> None:
        self.line = max(2, round(max(width, height) / 300))
        self.font = ImageFont.load_default(size=max(12, round(max(width, height) / 40)))

    def draw(self, image: Image.Image, sightings: Sequence[Sighting]) -> Image.Image:
        if not sightings:
            return image
        image = image.convert("RGB")
        draw = ImageDraw.Draw(image)
        width, height = image.size
        line = self.line
        for sighting in sightings:
            colour = PALETTE[(sighting.track or 0) % len(PALETTE)]
            box = sighting.box
            left, top = box["Left"] * width, box["Top"] * height
            right, bottom = left + box["Width"] * width, top + box["Height"] * height
            draw.rectangle((left, top, right, bottom), outline=colour, width=line)
            if not sighting.label:
                continue
            # The label sits on a band just above the box (below it when the box touches the top).
            text = draw.textbbox((0, 0), sighting.label, font=self.font)
            text_w, text_h = text[2] - text[0], text[3] - text[1]
            band_h = text_h + 2 * line
            band_top = top - band_h if top - band_h >= 0 else min(bottom, height - band_h)
            draw.rectangle((left, band_top, left + text_w + 2 * line, band_top + band_h), fill=colour)
            draw.text((left + line, band_top + line - text[1]), sighting.label, fill=(0, 0, 0), font=self.font)
        return image
