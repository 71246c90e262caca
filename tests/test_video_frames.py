"""Probing and sampling stored videos: the shared sample clips, an MP4 made from one, and bad files."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from candor.core.errors import InvalidVideoError, VideoTooLargeError
from candor.core.settings import VIDEO_SAMPLE_INTERVAL_MS
from candor.video.frames import VideoLimits, probe_video, sample_frames

ROOT = Path(__file__).resolve().parents[1]
VIDEOS = ROOT.parent / "shared" / "data" / "video"
TWO_PEOPLE = VIDEOS / "head-pose-face-detection-female-and-male.gif"
SIGNING = VIDEOS / "again.mkv"


@pytest.fixture(scope="module")
def mp4(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The two-person GIF as H.264 in MP4, at its own frame times (sample videos by Intel Corporation, CC BY 4.0)."""
    path = tmp_path_factory.mktemp("video") / "two-people.mp4"
    with av.open(str(TWO_PEOPLE)) as source, av.open(str(path), mode="w") as target:
        stream = target.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 480, 270, "yuv420p"
        stream.time_base = source.streams.video[0].time_base
        for frame in source.decode(video=0):
            out = av.VideoFrame.from_ndarray(frame.to_ndarray(format="rgb24"), format="rgb24")
            out.pts, out.time_base = frame.pts, frame.time_base
            target.mux(stream.encode(out.reformat(format="yuv420p")))
        target.mux(stream.encode())
    return path


def test_probing_gives_rekognitions_video_metadata(mp4: Path) -> None:
    assert probe_video(SIGNING).to_rekognition() == {
        "Codec": "h264",
        "DurationMillis": 2600,
        "Format": "Matroska / WebM",
        "FrameRate": 30.0,
        "FrameWidth": 640,
        "FrameHeight": 480,
    }
    gif = probe_video(TWO_PEOPLE)
    assert (gif.codec, gif.duration_ms, gif.width, gif.height, gif.frame_rate) == ("gif", 4660, 480, 270, 12.5)
    video = probe_video(mp4)
    assert (video.codec, video.width, video.height) == ("h264", 480, 270)
    assert video.format == "QuickTime / MOV"  # what Rekognition reports for an MP4 too
    assert abs(video.duration_ms - gif.duration_ms) <= 100


def test_frames_are_sampled_at_the_interval_with_their_own_timestamps(mp4: Path) -> None:
    frames = list(sample_frames(SIGNING))
    # 30 fps: a frame on every multiple of 200 ms, over the 2.6 s clip.
    assert [frame.timestamp_ms for frame in frames] == list(range(0, 2600, VIDEO_SAMPLE_INTERVAL_MS))
    assert all(frame.image.shape == (480, 640, 3) and frame.image.dtype == np.uint8 for frame in frames)
    for path in (TWO_PEOPLE, mp4):
        # 12.5 fps with uneven frame times: each sample is the first frame at or after its 200 ms mark.
        stamps = [frame.timestamp_ms for frame in sample_frames(path)]
        assert stamps[0] == 0
        gaps = np.diff(stamps)
        assert gaps.min() >= VIDEO_SAMPLE_INTERVAL_MS - 90 and gaps.max() <= VIDEO_SAMPLE_INTERVAL_MS + 90
        assert stamps[-1] >= 4300


def test_a_segment_samples_the_same_instants_as_the_whole_video() -> None:
    whole = [frame.timestamp_ms for frame in sample_frames(SIGNING)]
    first = [frame.timestamp_ms for frame in sample_frames(SIGNING, end_ms=1300)]
    second = [frame.timestamp_ms for frame in sample_frames(SIGNING, start_ms=1300)]
    assert first + second == whole
    assert first[-1] < 1300 <= second[0]
    whole_images = {frame.timestamp_ms: frame.image for frame in sample_frames(SIGNING)}
    for frame in sample_frames(SIGNING, start_ms=1300):
        assert np.array_equal(frame.image, whole_images[frame.timestamp_ms])


def test_a_photo_renamed_as_a_video_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "clip.mp4"
    Image.new("RGB", (320, 240), (200, 100, 50)).save(path, format="JPEG")
    with pytest.raises(InvalidVideoError, match="is a still image"):
        probe_video(path)


def test_an_empty_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "empty.mp4"
    path.write_bytes(b"")
    with pytest.raises(InvalidVideoError, match="empty"):
        list(sample_frames(path))


def test_a_text_file_is_not_a_video() -> None:
    with pytest.raises(InvalidVideoError, match="not a video") as caught:
        probe_video(VIDEOS / "README.md")
    assert caught.value.code == "InvalidVideo"


def test_a_truncated_video_is_refused(tmp_path: Path, mp4: Path) -> None:
    cut_mkv = tmp_path / "cut.mkv"
    cut_mkv.write_bytes(SIGNING.read_bytes()[: SIGNING.stat().st_size // 2])
    with pytest.raises(InvalidVideoError, match="truncated"):
        list(sample_frames(cut_mkv))
    # An MP4 written front to back keeps its index at the end: cut, it cannot even be opened.
    cut_mp4 = tmp_path / "cut.mp4"
    cut_mp4.write_bytes(mp4.read_bytes()[: mp4.stat().st_size // 2])
    with pytest.raises(InvalidVideoError, match="truncated"):
        list(sample_frames(cut_mp4))


def test_videos_past_the_limits_are_refused() -> None:
    with pytest.raises(VideoTooLargeError, match=r"limit is 2\.0 s") as caught:
        probe_video(SIGNING, VideoLimits(max_duration_ms=2000))
    assert caught.value.code == "VideoTooLarge"
    with pytest.raises(VideoTooLargeError, match="640x480"):
        list(sample_frames(SIGNING, limits=VideoLimits(max_frame_pixels=320 * 240)))
    with pytest.raises(VideoTooLargeError, match="bytes"):
        probe_video(SIGNING, VideoLimits(max_bytes=1000))
