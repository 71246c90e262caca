"""Decoding, detection, alignment and embedding on real photos: what a user of the service would see."""

from __future__ import annotations

import io
import itertools
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from candor.core import settings
from candor.core.errors import ImageTooLargeError, ImageTooSmallError, InvalidImageError
from candor.core.faces import DetectedFace
from candor.vision.align import DEFAULT_ALIGNMENT, FivePointAlignment, align_faces, similarity_transform
from candor.vision.detector import FaceDetector
from candor.vision.embedder import FaceEmbedder
from candor.vision.images import DecodedImage, decode_image
from candor.vision.models import ModelNotFoundError, load_models

MAX_BYTES = settings.MAX_OBJECT_IMAGE_BYTES


def decode_file(path: Path) -> DecodedImage:
    return decode_image(path.read_bytes(), MAX_BYTES)


def encode(image: Image.Image, format: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format, **params)
    return buffer.getvalue()


def png_header(width: int, height: int) -> bytes:
    """A PNG that claims width x height pixels but holds almost no data (a decompression bomb's shape)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")
    )


def centre(face: DetectedFace) -> tuple[float, float]:
    box = face.bounding_box
    return box.left + box.width / 2, box.top + box.height / 2


# --- decoding: refusals ------------------------------------------------------------------------------


def test_empty_bytes_are_refused() -> None:
    with pytest.raises(InvalidImageError, match="empty"):
        decode_image(b"", MAX_BYTES)


def test_random_bytes_are_refused() -> None:
    noise = np.random.default_rng(7).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    with pytest.raises(InvalidImageError, match="not an image"):
        decode_image(noise, MAX_BYTES)


def test_a_truncated_jpeg_is_refused(faces_dir: Path) -> None:
    data = (faces_dir / "enroll" / "obama" / "obama.jpg").read_bytes()
    with pytest.raises(InvalidImageError, match="truncated"):
        decode_image(data[: len(data) // 2], MAX_BYTES)


def test_a_truncated_png_is_refused(faces_dir: Path) -> None:
    data = (faces_dir / "probe" / "alex-lacamoire.png").read_bytes()
    with pytest.raises(InvalidImageError):
        decode_image(data[: len(data) // 2], MAX_BYTES)


def test_a_format_outside_the_accepted_ones_is_refused() -> None:
    data = encode(Image.new("RGB", (100, 100), (10, 20, 30)), "PPM")
    with pytest.raises(InvalidImageError, match="JPEG"):
        decode_image(data, MAX_BYTES)


def test_too_many_bytes_are_refused_before_anything_is_read() -> None:
    with pytest.raises(ImageTooLargeError, match="bytes"):
        decode_image(b"\xff\xd8" + b"\x00" * 2000, max_bytes=1000)


def test_a_png_claiming_50000_by_50000_pixels_is_refused() -> None:
    with pytest.raises(ImageTooLargeError):
        decode_image(png_header(50_000, 50_000), MAX_BYTES)


def test_a_header_just_over_the_pixel_limit_is_refused_by_our_own_check() -> None:
    # Under Pillow's own error limit (2 x 89 M pixels), so only our check can stop it.
    width = 10_000
    height = settings.MAX_IMAGE_PIXELS // width + 1
    with pytest.raises(ImageTooLargeError, match="pixels"):
        decode_image(png_header(width, height), MAX_BYTES)


def test_a_10_by_10_image_is_too_small() -> None:
    with pytest.raises(ImageTooSmallError):
        decode_image(encode(Image.new("RGB", (10, 10)), "PNG"), MAX_BYTES)


def test_the_minimum_side_applies_to_the_upright_image() -> None:
    narrow = encode(Image.new("RGB", (settings.MIN_IMAGE_SIDE - 1, 400)), "PNG")
    with pytest.raises(ImageTooSmallError):
        decode_image(narrow, MAX_BYTES)
    side = settings.MIN_IMAGE_SIDE
    assert decode_image(encode(Image.new("RGB", (side, side)), "PNG"), MAX_BYTES).pixels.shape == (
        side,
        side,
        3,
    )


# --- decoding: what comes out -------------------------------------------------------------------------


def test_a_jpeg_decodes_to_rgb_pixels_of_its_size(faces_dir: Path) -> None:
    image = decode_file(faces_dir / "enroll" / "obama" / "obama.jpg")
    assert (image.format, image.width, image.height, image.scale) == ("JPEG", 910, 1137, 1.0)
    assert image.pixels.shape == (1137, 910, 3) and image.pixels.dtype == np.uint8


def test_transparent_pixels_become_white() -> None:
    rgba = Image.new("RGBA", (100, 100), (0, 0, 0, 0))
    rgba.paste((200, 0, 0, 255), (0, 0, 50, 100))
    pixels = decode_image(encode(rgba, "PNG"), MAX_BYTES).pixels
    assert tuple(pixels[50, 25]) == (200, 0, 0)
    assert tuple(pixels[50, 75]) == (255, 255, 255)

    grey_alpha = Image.new("LA", (100, 100), (0, 0))
    assert tuple(decode_image(encode(grey_alpha, "PNG"), MAX_BYTES).pixels[0, 0]) == (255, 255, 255)


def test_a_palette_image_with_a_transparent_colour_becomes_white() -> None:
    palette = Image.new("P", (100, 100), 1)
    palette.putpalette([0, 0, 0, 10, 200, 10] + [0] * 762)
    palette.paste(0, (0, 0, 50, 100))
    pixels = decode_image(encode(palette, "GIF", transparency=0), MAX_BYTES).pixels
    assert tuple(pixels[50, 25]) == (255, 255, 255)
    assert tuple(pixels[50, 75]) == (10, 200, 10)


def test_greyscale_and_cmyk_become_rgb() -> None:
    grey = decode_image(encode(Image.new("L", (100, 100), 90), "JPEG"), MAX_BYTES).pixels
    assert grey.shape == (100, 100, 3) and abs(int(grey[50, 50, 0]) - 90) <= 2
    cmyk = decode_image(encode(Image.new("CMYK", (100, 100), (0, 255, 255, 0)), "JPEG"), MAX_BYTES).pixels
    red, green, blue = (int(v) for v in cmyk[50, 50])
    assert red > 200 and green < 50 and blue < 50


def test_a_16_bit_greyscale_png_is_scaled_not_clipped() -> None:
    values = np.full((100, 100), 32768, dtype=np.uint16)  # mid-grey in 16 bits
    image = Image.fromarray(values)
    assert image.mode.startswith("I;16")
    pixels = decode_image(encode(image, "PNG"), MAX_BYTES).pixels
    assert abs(int(pixels[50, 50, 0]) - 128) <= 1


@pytest.mark.parametrize("format", ["GIF", "WEBP"])
def test_an_animation_gives_its_first_frame(format: str) -> None:
    frames = [Image.new("RGB", (100, 100), colour) for colour in ((250, 0, 0), (0, 0, 250))]
    data = encode(frames[0], format, save_all=True, append_images=frames[1:], duration=100, loop=0)
    red, _, blue = (int(v) for v in decode_image(data, MAX_BYTES).pixels[50, 50])
    assert red > 200 and blue < 50


def test_a_very_large_jpeg_is_decoded_reduced_with_its_scale() -> None:
    # 8400 wide: at least twice DECODE_MIN_LONG_SIDE, so the decoder shrinks it by 2 (not below 4096).
    gradient = np.tile(np.linspace(0, 255, 8400, dtype=np.float32).astype(np.uint8), (300, 1))
    image = decode_image(encode(Image.fromarray(gradient).convert("RGB"), "JPEG"), 10**9)
    assert (image.width, image.height, image.scale) == (8400, 300, 2.0)
    assert image.pixels.shape == (150, 4200, 3)


# --- EXIF orientation ----------------------------------------------------------------------------------

ROTATIONS = [  # (EXIF orientation, how the camera stored the upright picture)
    (3, Image.Transpose.ROTATE_180),
    (6, Image.Transpose.ROTATE_90),
    (8, Image.Transpose.ROTATE_270),
]


@pytest.mark.parametrize(("orientation", "stored_as"), ROTATIONS)
def test_exif_orientation_is_applied(faces_dir: Path, orientation: int, stored_as: Image.Transpose) -> None:
    upright = Image.open(faces_dir / "probe" / "obama-480p.jpg").convert("RGB")
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = encode(upright.transpose(stored_as), "JPEG", quality=95, exif=exif.tobytes())
    image = decode_image(data, MAX_BYTES)
    assert (image.width, image.height) == upright.size
    difference = np.abs(image.pixels.astype(int) - np.asarray(upright, dtype=int)).mean()
    assert difference < 4  # the same picture, up to JPEG noise


@pytest.mark.parametrize(("orientation", "stored_as"), ROTATIONS)
def test_a_rotated_photo_gives_the_face_box_in_upright_coordinates(
    faces_dir: Path, models: tuple[FaceDetector, FaceEmbedder], orientation: int, stored_as: Image.Transpose
) -> None:
    detector, _ = models
    upright = Image.open(faces_dir / "enroll" / "obama" / "obama.jpg").convert("RGB")
    exif = Image.Exif()
    exif[0x0112] = orientation
    rotated = decode_image(encode(upright.transpose(stored_as), "JPEG", quality=95, exif=exif.tobytes()), MAX_BYTES)
    plain = decode_image(encode(upright, "JPEG", quality=95), MAX_BYTES)
    (found,) = detector.detect(rotated.pixels)
    (expected,) = detector.detect(plain.pixels)
    for got, want in zip(
        (
            found.bounding_box.left,
            found.bounding_box.top,
            found.bounding_box.width,
            found.bounding_box.height,
        ),
        (
            expected.bounding_box.left,
            expected.bounding_box.top,
            expected.bounding_box.width,
            expected.bounding_box.height,
        ),
        strict=True,
    ):
        assert got == pytest.approx(want, abs=6)


# --- detection ----------------------------------------------------------------------------------------


def test_obama_has_one_face_with_its_landmarks_in_place(
    faces_dir: Path, models: tuple[FaceDetector, FaceEmbedder]
) -> None:
    detector, _ = models
    image = decode_file(faces_dir / "enroll" / "obama" / "obama.jpg")
    (face,) = detector.detect(image.pixels)
    box = face.bounding_box
    # The face is roughly x 370-610, y 90-420 of this 910 x 1137 portrait.
    assert 330 < box.left < 420 and 50 < box.top < 140
    assert 200 < box.width < 300 and 270 < box.height < 400
    assert face.confidence >= settings.MIN_DETECTION_CONFIDENCE
    eye_left, eye_right, nose, mouth_left, mouth_right = face.landmarks
    for x, y in face.landmarks:
        assert box.left <= x <= box.left + box.width and box.top <= y <= box.top + box.height
    assert eye_left[0] < eye_right[0] and mouth_left[0] < mouth_right[0]
    assert max(eye_left[1], eye_right[1]) < nose[1] < min(mouth_left[1], mouth_right[1])


def test_a_group_photo_finds_every_face(faces_dir: Path, models: tuple[FaceDetector, FaceEmbedder]) -> None:
    detector, _ = models
    image = decode_file(faces_dir / "detect" / "2007_007763.jpg")
    faces = detector.detect(image.pixels)
    assert len(faces) == 7  # training.xml lists 7 faces
    areas = [face.bounding_box.area for face in faces]
    assert areas == sorted(areas, reverse=True)


def test_max_faces_keeps_the_largest(faces_dir: Path, models: tuple[FaceDetector, FaceEmbedder]) -> None:
    detector, _ = models
    pixels = decode_file(faces_dir / "detect" / "2007_007763.jpg").pixels
    everything = detector.detect(pixels)
    assert detector.detect(pixels, max_faces=3) == everything[:3]


def test_two_people_are_two_faces(faces_dir: Path, models: tuple[FaceDetector, FaceEmbedder]) -> None:
    detector, _ = models
    image = decode_file(faces_dir / "probe" / "two_people.jpg")
    faces = detector.detect(image.pixels)
    assert len(faces) == 2
    left, right = sorted(faces, key=lambda face: centre(face)[0])
    assert centre(left)[0] < image.width / 2 < centre(right)[0]


def test_a_face_cut_by_the_border_has_its_box_clipped_to_the_image(
    faces_dir: Path, models: tuple[FaceDetector, FaceEmbedder]
) -> None:
    detector, _ = models
    image = decode_file(faces_dir / "probe" / "obama_partial_face.jpg")
    (face,) = detector.detect(image.pixels)
    box = face.bounding_box
    assert box.left >= 0 and box.top >= 0
    assert box.left + box.width <= image.width and box.top + box.height <= image.height


def test_a_blank_image_has_no_face(models: tuple[FaceDetector, FaceEmbedder]) -> None:
    detector, _ = models
    assert detector.detect(np.full((300, 400, 3), 128, dtype=np.uint8)) == []


def test_detection_maps_a_reduced_jpeg_back_to_original_pixels(
    faces_dir: Path, models: tuple[FaceDetector, FaceEmbedder]
) -> None:
    detector, _ = models
    portrait = Image.open(faces_dir / "enroll" / "obama" / "obama.jpg").convert("RGB")
    canvas = Image.new("RGB", (8400, 1200), (90, 90, 90))
    canvas.paste(portrait.resize((910, 1137)), (5000, 30))
    data = encode(canvas, "JPEG", quality=90)
    reduced = decode_image(data, 10**9)
    full = decode_image(data, 10**9, draft_long_side=None)
    assert (reduced.scale, full.scale) == (2.0, 1.0)
    (from_reduced,) = (reduced.to_original(face) for face in detector.detect(reduced.pixels))
    (from_full,) = detector.detect(full.pixels)
    assert centre(from_reduced) == pytest.approx(centre(from_full), abs=8)
    assert from_reduced.bounding_box.width == pytest.approx(from_full.bounding_box.width, rel=0.05)


# --- alignment and embedding ---------------------------------------------------------------------------


def test_similarity_transform_recovers_a_known_one() -> None:
    points = np.array([[30.0, 50.0], [80.0, 48.0], [55.0, 75.0], [35.0, 100.0], [75.0, 98.0]])
    angle, scale, shift = 0.3, 1.7, np.array([12.0, -7.0])
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    moved = points @ (scale * rotation).T + shift
    matrix = similarity_transform(points, moved)
    assert matrix is not None
    np.testing.assert_allclose(matrix[:2, :2], scale * rotation, atol=1e-9)
    np.testing.assert_allclose(matrix[:2, 2], shift, atol=1e-9)
    assert similarity_transform(np.ones((5, 2)), moved) is None


def test_five_point_alignment_puts_the_eyes_on_the_template(
    faces_dir: Path, models: tuple[FaceDetector, FaceEmbedder]
) -> None:
    detector, _ = models
    image = decode_file(faces_dir / "enroll" / "obama" / "obama.jpg")
    (face,) = detector.detect(image.pixels)
    alignment = FivePointAlignment(face_scale=1.0)
    matrix = alignment.matrix(face, 160)
    landmarks = np.c_[np.asarray(face.landmarks), np.ones(5)] @ matrix[:2].T
    assert np.abs(landmarks - alignment.template(160)).max() < 8  # five points, four degrees of freedom


def test_crops_are_160_pixel_rgb(faces_dir: Path, models: tuple[FaceDetector, FaceEmbedder]) -> None:
    detector, _ = models
    image = decode_file(faces_dir / "probe" / "two_people.jpg")
    crops = align_faces(image.pixels, detector.detect(image.pixels), DEFAULT_ALIGNMENT)
    assert crops.shape == (2, 160, 160, 3) and crops.dtype == np.float32
    assert crops.min() >= 0 and crops.max() <= 255 and crops.std() > 20


def test_embeddings_are_unit_vectors_and_batching_changes_nothing(
    faces_dir: Path, models: tuple[FaceDetector, FaceEmbedder]
) -> None:
    detector, embedder = models
    image = decode_file(faces_dir / "probe" / "kit_with_rose.jpg")
    faces = detector.detect(image.pixels)
    together = embedder.embed_faces(image.pixels, faces)
    one_by_one = np.concatenate([embedder.embed_faces(image.pixels, [face]) for face in faces])
    assert together.shape == (2, settings.EMBEDDING_SIZE) and together.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(together, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(together, one_by_one, atol=1e-5)
    assert embedder.version == settings.EMBEDDER_VERSION
    assert embedder.embed_faces(image.pixels, []).shape == (0, settings.EMBEDDING_SIZE)


def test_same_person_pairs_score_above_different_person_pairs(
    faces_dir: Path, models: tuple[FaceDetector, FaceEmbedder]
) -> None:
    detector, embedder = models
    people: list[str] = []
    vectors: list[np.ndarray] = []
    for path in sorted((faces_dir / "enroll").glob("*/*")):
        image = decode_file(path)
        faces = detector.detect(image.pixels, max_faces=1)
        people.append(path.parent.name)
        vectors.append(embedder.embed_faces(image.pixels, faces)[0])
    same: list[float] = []
    different: list[float] = []
    for i, j in itertools.combinations(range(len(people)), 2):
        (same if people[i] == people[j] else different).append(float(vectors[i] @ vectors[j]))
    assert len(same) == 4
    # Every same-person pair above every different-person pair (measured gap: 0.34 to 0.67).
    assert min(same) > max(different) + 0.1


def test_a_missing_model_names_the_setup_command(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match=r"scripts/setup\.sh"):
        load_models(tmp_path)


def test_models_are_loaded_once(model_dir: Path) -> None:
    assert load_models(model_dir) is load_models(model_dir)
