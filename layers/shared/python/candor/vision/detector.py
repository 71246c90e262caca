"""YuNet (2023mar) face detection in onnxruntime, decoded as OpenCV's FaceDetectorYN does."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image

from candor.core import settings
from candor.core.faces import BoundingBox, DetectedFace


def create_session(model_path: Path, intra_op_threads: int = 0) -> ort.InferenceSession:
    """One CPU session; 0 threads lets onnxruntime use every core (Lambda's vCPUs grow with memory)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    # Both models are a single chain of operators: parallel branches would only add scheduling cost.
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # Idle pool threads sleep instead of spinning: with the detect and embed workers on the same cores (the
    # local runtime), or a fraction of a vCPU (Lambda under 1769 MB), spinning threads steal the cores the
    # working ones need; measured 2-3x slower per photo under load (docs/benchmarks.md, pipeline efficiency).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(model_path), sess_options=options, providers=["CPUExecutionProvider"])


@dataclass(frozen=True)
class Letterbox:
    """Where an image sits in the detector's input: scaled by `scale`, top-left, padded right and below."""

    scale: float
    width: int
    height: int


class FaceDetector:
    """YuNet 2023mar: fixed 1x3x640x640 BGR input in 0..255 (no mean, no std), anchor-free heads at
    strides 8, 16 and 32, each giving cls, obj, box and five landmarks per grid cell."""

    input_size = (640, 640)
    mean = 0.0
    std = 1.0
    strides = (8, 16, 32)
    version = settings.DETECTOR_VERSION

    def __init__(
        self,
        model_path: Path,
        intra_op_threads: int = 0,
        nms_iou: float = settings.DETECTION_NMS_IOU,
    ) -> None:
        self.session = create_session(model_path, intra_op_threads)
        self.input_name = self.session.get_inputs()[0].name
        self.nms_iou = nms_iou
        outputs = [output.name for output in self.session.get_outputs()]
        self._output_names = [f"{head}_{stride}" for head in ("cls", "obj", "bbox", "kps") for stride in self.strides]
        missing = sorted(set(self._output_names) - set(outputs))
        if missing:
            raise ValueError(f"{model_path} is not a YuNet 2023mar model: it has no outputs {missing}")
        width, height = self.input_size
        # Grid cell indices (col, row) per stride, in the row-major order of the model's outputs.
        self._grids = {
            stride: np.stack(np.meshgrid(np.arange(width // stride), np.arange(height // stride)), axis=-1)
            .reshape(-1, 2)
            .astype(np.float32)
            for stride in self.strides
        }

    def detect(
        self,
        image: np.ndarray,
        max_faces: int = settings.MAX_FACES,
        min_confidence: float = settings.MIN_DETECTION_CONFIDENCE,
    ) -> list[DetectedFace]:
        """Faces in an RGB uint8 image (height x width x 3), largest first, at most `max_faces`.

        Boxes are clipped to the image; landmarks are not, so that a face cut by the border still
        aligns by where its eyes and mouth really are."""
        blob, letterbox = self.prepare(image)
        boxes, landmarks, scores = self.decode(self.session.run(self._output_names, {self.input_name: blob}))
        keep = scores >= min_confidence
        boxes, landmarks, scores = boxes[keep], landmarks[keep], scores[keep]
        keep_indices = non_max_suppression(boxes, scores, self.nms_iou)
        boxes, landmarks, scores = boxes[keep_indices], landmarks[keep_indices], scores[keep_indices]

        height, width = image.shape[:2]
        boxes = boxes / letterbox.scale
        landmarks = landmarks / letterbox.scale
        boxes[:, [0, 2]] = np.clip(boxes[:, [0, 2]], 0, width)
        boxes[:, [1, 3]] = np.clip(boxes[:, [1, 3]], 0, height)

        faces = [
            DetectedFace(
                bounding_box=BoundingBox(left=float(x1), top=float(y1), width=float(x2 - x1), height=float(y2 - y1)),
                landmarks=tuple((float(x), float(y)) for x, y in points),
                confidence=float(score),
            )
            for (x1, y1, x2, y2), points, score in zip(boxes, landmarks, scores, strict=True)
            if x2 > x1 and y2 > y1
        ]
        faces.sort(key=lambda face: face.bounding_box.area, reverse=True)
        return faces[:max_faces]

    def prepare(self, image: np.ndarray) -> tuple[np.ndarray, Letterbox]:
        """Letterbox into the fixed input: keep the aspect ratio, pad with black to the right and below
        (as OpenCV pads), so that mapping back is a single division."""
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"expected an RGB uint8 image (height x width x 3), got {image.dtype} {image.shape}")
        height, width = image.shape[:2]
        input_width, input_height = self.input_size
        scale = min(input_width / width, input_height / height)
        new_width = max(1, min(input_width, round(width * scale)))
        new_height = max(1, min(input_height, round(height * scale)))
        resized = np.asarray(
            # reducing_gap=1: Pillow first box-averages by the whole factor, then filters the rest: 2.4x
            # faster on a 3 MP photo than filtering at full size, still antialiased, same detections.
            Image.fromarray(image).resize((new_width, new_height), Image.Resampling.BILINEAR, reducing_gap=1.0)
        )
        blob = np.zeros((1, 3, input_height, input_width), dtype=np.float32)
        # RGB to the BGR planes the model was trained on.
        blob[0, :, :new_height, :new_width] = resized[:, :, ::-1].transpose(2, 0, 1)
        if self.mean != 0.0 or self.std != 1.0:
            blob = (blob - self.mean) / self.std
        return blob, Letterbox(scale=scale, width=new_width, height=new_height)

    def decode(self, outputs: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Raw heads to (boxes x1 y1 x2 y2, landmarks 5x2, scores) in input pixels, for every cell.
        The same arithmetic as OpenCV's FaceDetectorYN::postProcess for this model."""
        count = len(self.strides)
        all_boxes, all_landmarks, all_scores = [], [], []
        for i, stride in enumerate(self.strides):
            cls = outputs[i][0, :, 0]
            obj = outputs[i + count][0, :, 0]
            bbox = outputs[i + 2 * count][0]
            kps = outputs[i + 3 * count][0]
            grid = self._grids[stride]
            scores = np.sqrt(np.clip(cls, 0.0, 1.0) * np.clip(obj, 0.0, 1.0))
            centres = (grid + bbox[:, :2]) * stride
            sizes = np.exp(bbox[:, 2:4]) * stride
            all_boxes.append(np.concatenate([centres - sizes / 2, centres + sizes / 2], axis=1))
            all_landmarks.append((kps.reshape(-1, 5, 2) + grid[:, None, :]) * stride)
            all_scores.append(scores)
        return np.concatenate(all_boxes), np.concatenate(all_landmarks), np.concatenate(all_scores)


def non_max_suppression(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Greedy NMS, highest score first: indices of the boxes kept (x1 y1 x2 y2 boxes)."""
    order = np.argsort(-scores, kind="stable")
    areas = np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None)
    keep: list[int] = []
    while order.size:
        best = int(order[0])
        keep.append(best)
        rest = order[1:]
        iou = box_iou(boxes[best], boxes[rest], areas[best], areas[rest])
        order = rest[iou <= iou_threshold]
    return np.asarray(keep, dtype=np.int64)


def box_iou(
    box: np.ndarray, others: np.ndarray, area: float | None = None, other_areas: np.ndarray | None = None
) -> np.ndarray:
    """Intersection over union of one x1 y1 x2 y2 box with each of `others`."""
    if area is None:
        area = float(max(box[2] - box[0], 0) * max(box[3] - box[1], 0))
    if other_areas is None:
        other_areas = np.clip(others[:, 2] - others[:, 0], 0, None) * np.clip(others[:, 3] - others[:, 1], 0, None)
    width = np.clip(np.minimum(box[2], others[:, 2]) - np.maximum(box[0], others[:, 0]), 0, None)
    height = np.clip(np.minimum(box[3], others[:, 3]) - np.maximum(box[1], others[:, 1]), 0, None)
    intersection = width * height
    union = area + other_areas - intersection
    return np.where(union > 0, intersection / np.maximum(union, 1e-12), 0.0)
