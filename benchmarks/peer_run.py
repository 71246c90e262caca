"""Runs inside the peer's own virtualenv (face_recognition + dlib), never in Candor's: detect and encode every
photo named on stdin (a JSON list of paths) with the library's defaults, and print one JSON object.

Defaults, as a user of the library gets them: HOG detector, upsampled once; 128-d encodings with the
"small" (5-point) landmark model and one jitter. Each photo is timed from file to encodings.
"""

from __future__ import annotations

import json
import sys
import time

started = time.perf_counter()
import face_recognition  # noqa: E402 (timed: the import loads dlib's models)

import_s = time.perf_counter() - started


def run(path: str) -> dict[str, object]:
    begin, cpu = time.perf_counter(), time.process_time()
    image = face_recognition.load_image_file(path)
    boxes = face_recognition.face_locations(image)
    encodings = face_recognition.face_encodings(image, known_face_locations=boxes)
    return {
        "path": path,
        "seconds": time.perf_counter() - begin,
        "cpu_seconds": time.process_time() - cpu,
        # (top, right, bottom, left) in pixels, as the library returns them.
        "boxes": [list(box) for box in boxes],
        "encodings": [encoding.tolist() for encoding in encodings],
    }


def main() -> None:
    paths = json.load(sys.stdin)
    if paths:
        run(paths[0])  # warm-up: first-call costs are not per-photo costs
    photos = [run(path) for path in paths]
    json.dump({"import_s": import_s, "version": face_recognition.__version__, "photos": photos}, sys.stdout)


if __name__ == "__main__":
    main()
