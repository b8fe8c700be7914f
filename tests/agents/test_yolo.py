"""YOLO decoding and NMS on hand-built tensors, frame decoding and letterboxing, and the
lab's YOLO-shaped model run in ONNX Runtime."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from edgelab.experiments import labmodel
from edgelab.experiments.feeder import synthetic_frame
from edgelab.experiments.yolo import (
    FrameError,
    Geometry,
    decode,
    iou_matrix,
    iou_one_to_many,
    letterbox,
    nms,
    postprocess,
    read_frame,
)


def output_of(rows: list[tuple[float, float, float, float, list[float]]]) -> np.ndarray:
    """A [1, 4 + C, N] tensor from (cx, cy, w, h, scores) per anchor."""
    return np.array([[cx, cy, w, h, *scores] for cx, cy, w, h, scores in rows], dtype=np.float32).T[None]


def test_decode_converts_centres_to_corners_and_takes_the_best_class() -> None:
    out = output_of([(50, 40, 20, 10, [0.1, 0.9, 0.3]),
                     (10, 10, 4, 4, [0.2, 0.1, 0.24]),  # below 0.25: dropped
                     (100, 100, 50, 30, [0.6, 0.1, 0.5])])
    boxes, scores, classes = decode(out, conf=0.25)
    assert boxes.tolist() == [[40, 35, 60, 45], [75, 85, 125, 115]]
    assert scores.tolist() == pytest.approx([0.9, 0.6])
    assert classes.tolist() == [1, 0]
    assert decode(out, conf=0.95)[0].shape == (0, 4)
    with pytest.raises(ValueError, match="not"):
        decode(np.zeros((1, 4, 10), dtype=np.float32), 0.25)


def test_iou_math() -> None:
    box = np.array([0, 0, 10, 10], dtype=np.float32)
    others = np.array([[5, 0, 15, 10], [0, 0, 10, 10], [20, 20, 30, 30], [2, 2, 4, 4], [0, 0, 0, 0]],
                      dtype=np.float32)
    assert iou_one_to_many(box, others).tolist() == pytest.approx([50 / 150, 1.0, 0.0, 4 / 100, 0.0])


def test_nms_suppresses_overlaps_within_a_class_only() -> None:
    boxes = np.array([[0, 0, 10, 10], [5, 0, 15, 10], [1, 1, 11, 11], [0, 0, 10, 10], [50, 50, 60, 60]],
                     dtype=np.float32)
    scores = np.array([0.8, 0.7, 0.9, 0.6, 0.5], dtype=np.float32)
    classes = np.array([0, 0, 0, 1, 0])
    # Box 2 (0.9) wins; box 0 overlaps it by 81/119 > 0.45 and goes; box 1 overlaps box 2
    # by 40/160 = 0.25 and stays; box 3 is of another class; box 4 overlaps nothing.
    assert nms(boxes, scores, classes, iou=0.45).tolist() == [2, 1, 3, 4]
    # A threshold below 0.25 also drops box 1.
    assert nms(boxes, scores, classes, iou=0.2).tolist() == [2, 3, 4]
    assert nms(boxes, scores, classes, iou=0.45, max_detections=2).tolist() == [2, 1]
    assert nms(boxes[:0], scores[:0], classes[:0], iou=0.45).tolist() == []


def test_postprocess_maps_boxes_back_to_the_frame() -> None:
    # A 200x100 frame in a 64 input: scale 0.32, 64x32 placed 16 rows down.
    image = np.zeros((100, 200, 3), dtype=np.uint8)
    _tensor, geometry = letterbox(image, 64)
    assert geometry == Geometry(width=200, height=100, scale=0.32, pad_x=0, pad_y=16)
    out = output_of([(32, 32, 32, 16, [0.9]), (2, 17, 8, 4, [0.8])])
    boxes, scores, classes = postprocess(out, geometry, conf=0.25, iou=0.45)
    np.testing.assert_allclose(boxes, [[50, 25, 150, 75], [0, 0, 18.75, 9.375]], rtol=1e-5)  # 2nd clipped at 0
    assert scores.tolist() == pytest.approx([0.9, 0.8]) and classes.tolist() == [0, 0]


def test_letterbox_scales_centres_and_pads() -> None:
    image = np.zeros((20, 40, 3), dtype=np.uint8)
    image[:, :20] = (255, 0, 0)  # left half red
    tensor, geometry = letterbox(image, 32)
    assert tensor.shape == (1, 3, 32, 32) and tensor.dtype == np.float32
    assert (geometry.pad_x, geometry.pad_y, geometry.scale) == (0, 8, 0.8)
    assert tensor[0, :, 0, 0] == pytest.approx([114 / 255] * 3)  # padding row
    assert tensor[0, :, 8, 0] == pytest.approx([1.0, 0.0, 0.0])  # red
    assert tensor[0, :, 23, 31] == pytest.approx([0.0, 0.0, 0.0])  # black, last image row
    assert tensor[0, :, 24, 31] == pytest.approx([114 / 255] * 3)


def test_read_frame_formats() -> None:
    frame = synthetic_frame(32, 24, 3, 4)
    image = read_frame(frame)
    assert image.shape == (24, 32, 3)
    assert image.tobytes() == frame[-32 * 24 * 3:]
    assert read_frame(b"P6\n# a comment\n2 1\n255\n" + bytes(range(6))).tolist() == [[[0, 1, 2], [3, 4, 5]]]
    buffer = io.BytesIO()
    np.save(buffer, image)
    assert np.array_equal(read_frame(buffer.getvalue()), image)
    from PIL import Image

    png = io.BytesIO()
    Image.fromarray(image).save(png, format="PNG")
    assert np.array_equal(read_frame(png.getvalue()), image)
    with pytest.raises(FrameError, match="needs 6 pixel bytes, has 5"):
        read_frame(b"P6\n2 1\n255\n" + bytes(5))
    with pytest.raises(FrameError, match="maxval 65535"):
        read_frame(b"P6\n1 1\n65535\n" + bytes(6))
    with pytest.raises(FrameError, match="not an image"):
        read_frame(b"hello")


def test_lab_model_runs_in_onnxruntime_with_yolos_output_shape(tmp_path: Path) -> None:
    import onnxruntime as ort

    path = labmodel.write(tmp_path / "lab.onnx", size=64, classes=3)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.shape for i in session.get_inputs()] == [[1, 3, 64, 64]]
    assert labmodel.anchors(64) == 64 + 16 + 4
    tensor, geometry = letterbox(read_frame(synthetic_frame(80, 60, 0, 4)), 64)
    (out,) = session.run(None, {"images": tensor})
    assert out.shape == (1, 7, 84)
    assert np.all((out[0, 4:] >= 0) & (out[0, 4:] <= 1))
    assert np.all((out[0, 2:4] > 0) & (out[0, 2:4] <= 16))  # sizes: up to a quarter of the input
    assert np.all((out[0, :2] >= -32) & (out[0, :2] <= 96))  # centres: a cell moved by at most its stride
    meta = session.get_modelmeta().custom_metadata_map
    assert (meta["name"], meta["version"]) == (labmodel.MODEL_NAME, labmodel.MODEL_VERSION)
    # Different frames give different outputs: the convolutions are real.
    other, _ = letterbox(read_frame(synthetic_frame(80, 60, 1, 4)), 64)
    assert not np.allclose(session.run(None, {"images": other})[0], out)
    boxes, _scores, _classes = postprocess(out, geometry, conf=0.0, iou=0.45, max_detections=10)
    assert len(boxes) == 10 and np.all(boxes[:, 2] <= 80) and np.all(boxes[:, 3] <= 60)


def test_lab_model_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert labmodel.main(["--out", str(tmp_path / "m.onnx"), "--size", "96", "--classes", "2"]) == 0
    assert "output [1, 6, 189]" in capsys.readouterr().out
    assert labmodel.main(["--out", str(tmp_path / "m.onnx"), "--size", "100"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == "edgelab-labmodel: bad input: size must be a multiple of 32 and >= 32, got 100"


def test_iou_matrix_agrees_with_one_to_many_and_nms_with_a_plain_greedy_loop() -> None:
    rng = np.random.default_rng(7)
    corners = rng.uniform(0, 100, (300, 2)).astype(np.float32)
    boxes = np.concatenate([corners, corners + rng.uniform(1, 30, (300, 2)).astype(np.float32)], axis=1)
    scores = rng.uniform(0, 1, 300).astype(np.float32)
    classes = rng.integers(0, 3, 300)
    matrix = iou_matrix(boxes, boxes)
    for i in (0, 17, 299):
        np.testing.assert_allclose(matrix[i], iou_one_to_many(boxes[i], boxes), rtol=1e-5)
    expected: list[int] = []  # the textbook loop, one box at a time
    for i in np.argsort(-scores, kind="stable"):
        if all(classes[k] != classes[i] or iou_one_to_many(boxes[k], boxes[i:i + 1])[0] <= 0.5 for k in expected):
            expected.append(int(i))
    assert nms(boxes, scores, classes, iou=0.5, max_detections=300).tolist() == expected


def test_letterbox_whole_number_reduction_equals_the_general_nearest_neighbour() -> None:
    image = np.random.default_rng(3).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    tensor, geometry = letterbox(image, 320)  # 640x480 -> 320x240: every second pixel
    assert (geometry.scale, geometry.pad_y) == (0.5, 40)
    rows = np.minimum((np.arange(240) + 0.5) / 0.5, 479).astype(np.intp)
    cols = np.minimum((np.arange(320) + 0.5) / 0.5, 639).astype(np.intp)
    expected = image[rows[:, None], cols[None, :]].transpose(2, 0, 1) / np.float32(255)
    np.testing.assert_allclose(tensor[0, :, 40:280], expected, rtol=1e-6)
    assert np.all(tensor[0, :, :40] == np.float32(114 / 255)) and np.all(tensor[0, :, 280:] == np.float32(114 / 255))


def test_decode_agrees_with_a_full_argmax_over_every_anchor() -> None:
    rng = np.random.default_rng(11)
    table = rng.uniform(0, 1, (1, 4 + 80, 2100)).astype(np.float32)
    table[0, :4] *= 300
    table[0, 4:] **= 4  # most anchors score low, as a detector's do
    boxes, scores, classes = decode(table, conf=0.99)
    best = table[0, 4:].argmax(axis=0)  # the plain way: the best class of every anchor
    best_scores = table[0, 4:][best, np.arange(2100)]
    keep = np.flatnonzero(best_scores >= 0.99)
    assert 0 < len(keep) < 2100
    assert classes.tolist() == best[keep].tolist() and scores.tolist() == best_scores[keep].tolist()
    cx, cy, w, h = table[0, :4, keep].T
    np.testing.assert_allclose(boxes, np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1))


def test_conv_flops_counts_multiply_adds_of_every_convolution(tmp_path: Path) -> None:
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.zeros((8, 3, 3, 3), dtype=np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])],
        "one_conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 64, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 32, 32])], [weight])
    one = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    assert labmodel.conv_flops(one) == 2 * (8 * 32 * 32) * (3 * 3 * 3)
    # The lab model at 640, by hand: two 3x3 convolutions per stage, then three 1x1 heads.
    expected, side, cin = 0, 640, 3
    for width in labmodel.WIDTHS:
        side //= 2
        expected += 2 * side * side * width * (cin * 9 + width * 9)
        cin = width
    expected += sum(2 * (640 // s) ** 2 * 84 * w for s, w in ((8, 64), (16, 128), (32, 256)))
    path = labmodel.write(tmp_path / "lab640.onnx", size=640)
    assert labmodel.conv_flops(path) == expected
    assert 3.4e9 < expected < 3.6e9  # about 40 % of yolov8n's 8.7 GFLOPs at 640


def test_result_detections_round_like_the_published_format() -> None:
    from edgelab.experiments.consumer import detections

    boxes = np.array([[12.3, 0.04, 639.96, 100.25], [1 / 3, 2 / 3, 5.55, 7.0]], dtype=np.float32)
    scores = np.array([0.61234567, 0.25], dtype=np.float32)
    classes = np.array([3, 79])
    found = detections(boxes, scores, classes)
    assert found == [{"box": [round(float(v), 1) for v in box], "score": round(float(score), 4), "class": int(cls)}
                     for box, score, cls in zip(boxes, scores, classes, strict=True)]
    assert found[0] == {"box": [12.3, 0.0, 640.0, 100.2], "score": 0.6123, "class": 3}
    assert all(type(v) is float for d in found for v in d["box"]) and type(found[0]["class"]) is int
    assert detections(boxes[:0], scores[:0], classes[:0]) == []
