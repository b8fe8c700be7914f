"""YOLO-format detection in numpy: frame decoding, letterboxing, output decoding, NMS.

The model interface is an Ultralytics YOLOv8 ONNX export (and edgelab's lab model,
experiments/labmodel.py): input [1, 3, S, S] RGB in [0, 1], output [1, 4 + C, N] with
cx, cy, w, h in input pixels then C class scores per anchor.

    image = read_frame(record.value)                  # H x W x 3 uint8
    tensor, geometry = letterbox(image, 640)
    boxes, scores, classes = postprocess(output, geometry, conf=0.25, iou=0.45)
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np

PAD_VALUE = 114  # Ultralytics' letterbox grey
MAX_CANDIDATES = 2000  # best-scoring boxes that enter NMS (its IoU matrix is n x n)


class FrameError(ValueError):
    """A frame that cannot be decoded into an RGB image."""


@dataclass(frozen=True)
class Geometry:
    """How a frame was fitted into the model input: input = frame * scale + (pad_x, pad_y)."""

    width: int
    height: int
    scale: float
    pad_x: int
    pad_y: int


def _ppm(data: bytes) -> np.ndarray:
    """Binary PPM (P6, maxval 255), the feeder's generated frames, without copying the pixels."""
    fields: list[bytes] = []
    pos = 2
    while len(fields) < 3:
        while pos < len(data) and data[pos:pos + 1].isspace():
            pos += 1
        if data[pos:pos + 1] == b"#":
            end = data.find(b"\n", pos)
            pos = len(data) if end < 0 else end + 1
            continue
        start = pos
        while pos < len(data) and not data[pos:pos + 1].isspace():
            pos += 1
        if start == pos:
            raise FrameError("PPM header is incomplete")
        fields.append(data[start:pos])
    pos += 1  # the single whitespace byte after maxval
    try:
        width, height, maxval = (int(f) for f in fields)
    except ValueError:
        raise FrameError("PPM header is not numeric") from None
    if maxval != 255 or width < 1 or height < 1:
        raise FrameError(f"PPM {width}x{height} maxval {maxval} is not supported (8-bit RGB only)")
    if len(data) - pos != width * height * 3:
        raise FrameError(f"PPM {width}x{height} needs {width * height * 3} pixel bytes, has {len(data) - pos}")
    return np.frombuffer(data, dtype=np.uint8, count=width * height * 3, offset=pos).reshape(height, width, 3)


def read_frame(data: bytes) -> np.ndarray:
    """An H x W x 3 uint8 RGB image from a frame record: binary PPM, .npy, or any image
    format Pillow reads (JPEG, PNG, BMP, WebP)."""
    if data[:2] == b"P6":
        return _ppm(data)
    if data[:6] == b"\x93NUMPY":
        try:
            array = np.load(io.BytesIO(data), allow_pickle=False)
        except ValueError as exc:
            raise FrameError(f"npy frame: {exc}") from None
        if array.ndim != 3 or array.shape[2] != 3:
            raise FrameError(f"npy frame has shape {array.shape}, not H x W x 3")
        return np.ascontiguousarray(array, dtype=np.uint8)
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError:
        raise FrameError("frame is not PPM or npy, and Pillow is not installed to decode it") from None
    try:
        with Image.open(io.BytesIO(data)) as image:
            return np.asarray(image.convert("RGB"))
    except (UnidentifiedImageError, OSError) as exc:
        raise FrameError(f"frame is not an image: {' '.join(str(exc).split())[:200]}") from None


def letterbox(image: np.ndarray, size: int) -> tuple[np.ndarray, Geometry]:
    """The model input [1, 3, size, size] float32 in [0, 1]: the image scaled to fit
    (nearest neighbour, aspect kept) and centred on grey; and how it was placed."""
    height, width = image.shape[:2]
    scale = min(size / width, size / height)
    new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
    pad_x, pad_y = (size - new_w) // 2, (size - new_h) // 2
    tensor = np.empty((1, 3, size, size), dtype=np.float32)
    grey = np.float32(PAD_VALUE / 255.0)
    tensor[0, :, :pad_y] = grey
    tensor[0, :, pad_y + new_h:] = grey
    tensor[0, :, pad_y:pad_y + new_h, :pad_x] = grey
    tensor[0, :, pad_y:pad_y + new_h, pad_x + new_w:] = grey
    step = round(1 / scale)
    if (new_w, new_h) != (width, height) and abs(1 / scale - step) < 1e-9:
        # A whole-number reduction: nearest neighbour is a strided view, no gather.
        image = image[step // 2::step, step // 2::step][:new_h, :new_w]
    elif (new_w, new_h) != (width, height):
        rows = np.minimum((np.arange(new_h) + 0.5) / scale, height - 1).astype(np.intp)
        cols = np.minimum((np.arange(new_w) + 0.5) / scale, width - 1).astype(np.intp)
        image = image[rows[:, None], cols[None, :]]
    # Converted and moved to planar layout in one pass, straight into the input tensor.
    np.multiply(image.transpose(2, 0, 1), np.float32(1 / 255.0),
                out=tensor[0, :, pad_y:pad_y + new_h, pad_x:pad_x + new_w], dtype=np.float32)
    return tensor, Geometry(width, height, scale, pad_x, pad_y)


def decode(output: np.ndarray, conf: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Candidates of one image from a [1, 4 + C, N] (or [4 + C, N]) output: boxes as
    x1, y1, x2, y2 in input pixels, the best class's score, and that class; only
    anchors whose best score is >= conf."""
    table = output[0] if output.ndim == 3 else output
    if table.ndim != 2 or table.shape[0] < 5:
        raise ValueError(f"output shape {output.shape} is not [1, 4 + classes, anchors]")
    scores_all = table[4:]
    # The best score per anchor is a row-by-row reduction over the contiguous class
    # rows; the (strided, slower) argmax runs only on the few anchors that pass conf.
    best = scores_all.max(axis=0)
    keep = np.flatnonzero(best >= conf)
    classes = scores_all[:, keep].argmax(axis=0)
    cx, cy, w, h = table[:4, keep]
    boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1).astype(np.float32)
    return boxes, best[keep].astype(np.float32), classes.astype(np.int64)


def iou_one_to_many(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Intersection over union of one x1, y1, x2, y2 box with each of boxes."""
    x1 = np.maximum(box[0], boxes[:, 0])
    y1 = np.maximum(box[1], boxes[:, 1])
    x2 = np.minimum(box[2], boxes[:, 2])
    y2 = np.minimum(box[3], boxes[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    union = area + areas - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Intersection over union of every box of a with every box of b (len(a) x len(b))."""
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    areas_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    areas_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = areas_a[:, None] + areas_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def nms(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, iou: float,
        max_detections: int = 300) -> np.ndarray:
    """Greedy per-class non-maximum suppression: indices of the kept boxes, best first.
    A box is dropped when it overlaps a kept better box of the same class by more than
    iou; only the MAX_CANDIDATES best boxes are considered."""
    if len(boxes) == 0:
        return np.empty(0, dtype=np.int64)
    order = np.argsort(-scores, kind="stable")[:MAX_CANDIDATES]
    # Shifting each class's boxes by its own offset keeps classes from overlapping,
    # so one pass suppresses within classes only.
    span = float(np.max(boxes[:, 2:]) - min(float(np.min(boxes[:, :2])), 0.0)) + 1.0
    shifted = boxes[order] + (classes[order].astype(np.float32) * span)[:, None]
    overlaps = iou_matrix(shifted, shifted) > iou
    suppressed = np.zeros(len(order), dtype=bool)
    kept: list[int] = []
    for rank in range(len(order)):
        if suppressed[rank]:
            continue
        kept.append(int(order[rank]))
        if len(kept) == max_detections:
            break
        suppressed |= overlaps[rank]
    return np.array(kept, dtype=np.int64)


def postprocess(output: np.ndarray, geometry: Geometry, *, conf: float = 0.25, iou: float = 0.45,
                max_detections: int = 100) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Detections of one frame in the frame's pixels: boxes (x1, y1, x2, y2, clipped to
    the frame), scores, classes; best first."""
    boxes, scores, classes = decode(output, conf)
    keep = nms(boxes, scores, classes, iou, max_detections)
    boxes = boxes[keep]
    boxes[:, [0, 2]] = np.clip((boxes[:, [0, 2]] - geometry.pad_x) / geometry.scale, 0, geometry.width)
    boxes[:, [1, 3]] = np.clip((boxes[:, [1, 3]] - geometry.pad_y) / geometry.scale, 0, geometry.height)
    return boxes, scores[keep], classes[keep]
