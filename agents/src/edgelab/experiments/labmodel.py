"""The lab's YOLO-shaped detection model, built with the `onnx` package.

No YOLO weights can be fetched on the lab, so edgelab builds a small network with the
interface of an Ultralytics YOLOv8 ONNX export and a real inference cost:

    input  "images"  float32 [1, 3, S, S]   RGB in [0, 1], letterboxed (S = --size, 640)
    output "output0" float32 [1, 4 + C, N]  per anchor: cx, cy, w, h in input pixels,
                                            then C class scores in [0, 1]
                                            (N = (S/8)^2 + (S/16)^2 + (S/32)^2: 8400 at 640)

The body is a stack of 3x3 convolutions with SiLU activations (stride 2 between
stages) and three 1x1 detection heads at strides 8, 16 and 32, like YOLOv8's. The
weights are random (from --seed), so the detections are meaningless: the model exists
to cost what a detector costs, not to find anything. On real NUCs put a real export
(e.g. yolov8n.onnx) in the model store instead; the consumer reads both the same way.

    python -m edgelab.experiments.labmodel --out lab-yolo.onnx [--size 640] [--classes 80]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .. import cli

PROG = "edgelab-labmodel"
MODEL_NAME = "edgelab-lab-yolo"
MODEL_VERSION = "1"
# Channels of the five stages (strides 2, 4, 8, 16, 32); two 3x3 convolutions each.
WIDTHS = (16, 32, 64, 128, 256)
OPSET = 17


def anchors(size: int) -> int:
    """N: the anchors of the three heads for an input of size x size."""
    return sum((size // stride) ** 2 for stride in (8, 16, 32))


def build(size: int = 640, classes: int = 80, seed: int = 0) -> Any:
    """The ModelProto (checked with onnx.checker)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    if size < 32 or size % 32:
        raise ValueError(f"size must be a multiple of 32 and >= 32, got {size}")
    if not 1 <= classes <= 1000:
        raise ValueError(f"classes must be from 1 to 1000, got {classes}")
    rng = np.random.default_rng(seed)
    nodes: list[Any] = []
    inits: list[Any] = []
    counter = [0]

    def name(prefix: str) -> str:
        counter[0] += 1
        return f"{prefix}{counter[0]}"

    def const(array: np.ndarray, prefix: str) -> str:
        key = name(prefix)
        inits.append(numpy_helper.from_array(array, key))
        return key

    def conv(x: str, cin: int, cout: int, kernel: int, stride: int, act: bool = True) -> str:
        scale = np.sqrt(2.0 / (cin * kernel * kernel))  # He initialisation keeps activations in range
        w = const((rng.standard_normal((cout, cin, kernel, kernel)) * scale).astype(np.float32), "w")
        b = const(np.zeros(cout, dtype=np.float32), "b")
        y = name("conv")
        pad = kernel // 2
        nodes.append(helper.make_node("Conv", [x, w, b], [y], kernel_shape=[kernel, kernel],
                                      strides=[stride, stride], pads=[pad] * 4))
        if not act:
            return y
        s = name("sig")
        out = name("silu")
        nodes.append(helper.make_node("Sigmoid", [y], [s]))
        nodes.append(helper.make_node("Mul", [y, s], [out]))
        return out

    x, cin = "images", 3
    features = {}
    for stage, width in enumerate(WIDTHS):
        x = conv(x, cin, width, 3, 2)
        x = conv(x, width, width, 3, 1)
        cin = width
        features[2 ** (stage + 1)] = (x, width)
    outputs = []
    for stride in (8, 16, 32):
        feature, width = features[stride]
        grid = size // stride
        raw = conv(feature, width, 4 + classes, 1, 1, act=False)
        flat = name("flat")
        shape = const(np.array([1, 4 + classes, grid * grid], dtype=np.int64), "shape")
        nodes.append(helper.make_node("Reshape", [raw, shape], [flat]))
        outputs.append(flat)
    joined = name("cat")
    nodes.append(helper.make_node("Concat", outputs, [joined], axis=2))
    # The heads' raw outputs are small (about +-0.5): spread them like trained logits.
    spread = name("spread")
    nodes.append(helper.make_node("Mul", [joined, const(np.array(8.0, dtype=np.float32), "gain")], [spread]))

    def rows(start: int, end: int) -> str:
        out = name("rows")
        nodes.append(helper.make_node("Slice", [spread, const(np.array([start], dtype=np.int64), "s"),
                                                const(np.array([end], dtype=np.int64), "e"),
                                                const(np.array([1], dtype=np.int64), "a")], [out]))
        return out

    # Centres: the anchor's grid cell centre moved by up to one stride (tanh); sizes:
    # up to a quarter of the input (sigmoid); scores: sigmoid shifted down, so few
    # anchors pass a usual confidence threshold, as with a trained detector.
    centres, strides = [], []
    for stride in (8, 16, 32):
        grid = size // stride
        ys, xs = np.meshgrid(np.arange(grid), np.arange(grid), indexing="ij")
        centres.append(np.stack([xs.ravel(), ys.ravel()]).astype(np.float32) * stride + stride / 2)
        strides.append(np.full(grid * grid, stride, dtype=np.float32))
    moved, offset = name("tanh"), name("offset")
    nodes.append(helper.make_node("Tanh", [rows(0, 2)], [moved]))
    nodes.append(helper.make_node("Mul", [moved, const(np.concatenate(strides)[None, None, :], "stride")], [offset]))
    xy = name("xy")
    nodes.append(helper.make_node("Add", [offset, const(np.concatenate(centres, axis=1)[None], "centre")], [xy]))
    wh_sig, wh = name("sig"), name("wh")
    nodes.append(helper.make_node("Sigmoid", [rows(2, 4)], [wh_sig]))
    nodes.append(helper.make_node("Mul", [wh_sig, const(np.array(size / 4, dtype=np.float32), "quarter")], [wh]))
    shifted, scores = name("shift"), name("scores")
    nodes.append(helper.make_node("Add", [rows(4, 4 + classes), const(np.array(-8.0, dtype=np.float32), "bias")],
                                  [shifted]))
    nodes.append(helper.make_node("Sigmoid", [shifted], [scores]))
    nodes.append(helper.make_node("Concat", [xy, wh, scores], ["output0"], axis=1))
    graph = helper.make_graph(
        nodes, "edgelab_lab_yolo",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, size, size])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, [1, 4 + classes, anchors(size)])],
        inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="edgelab", model_version=int(MODEL_VERSION))
    model.ir_version = 8
    helper.set_model_props(model, {"name": MODEL_NAME, "version": MODEL_VERSION, "imgsz": f"[{size}, {size}]",
                                   "names": str({i: f"class{i}" for i in range(classes)}),
                                   "description": "edgelab lab model: random weights, meaningless detections"})
    onnx.checker.check_model(model)
    return model


def conv_flops(model: Any) -> int:
    """Floating-point operations of one inference in the model's convolutions (a
    multiply-add counts 2), from the graph with its shapes inferred: what lets the lab
    model's cost be compared with a real detector's (Ultralytics gives yolov8n at 640
    as 8.7 GFLOPs). model: a ModelProto or the path of an .onnx file."""
    import onnx

    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model))
    inferred = onnx.shape_inference.infer_shapes(model)
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in (*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output)}
    weights = {t.name: list(t.dims) for t in inferred.graph.initializer}
    total = 0
    for node in inferred.graph.node:
        if node.op_type != "Conv":
            continue
        out = shapes.get(node.output[0])
        kernel = weights.get(node.input[1]) or shapes.get(node.input[1])
        if not out or not kernel or 0 in out:
            raise ValueError(f"Conv {node.name or node.output[0]}: shapes unknown after shape inference")
        # Each output element is a dot product over (input channels per group) x kh x kw.
        total += 2 * int(np.prod(out)) * int(np.prod(kernel[1:]))
    return total


def write(path: str | Path, size: int = 640, classes: int = 80, seed: int = 0) -> Path:
    """Build the model and write it to path (through a temporary name); the path."""
    import onnx

    target = Path(path)
    temporary = target.with_name(f".{target.name}.tmp")
    onnx.save_model(build(size, classes, seed), str(temporary))
    temporary.replace(target)
    return target


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, metavar="FILE", help="where to write the .onnx file")
    parser.add_argument("--size", type=int, default=640, help="input side in pixels, a multiple of 32 (640)")
    parser.add_argument("--classes", type=int, default=80, help="class scores per anchor (80, like COCO)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights (0)")


def start(args: argparse.Namespace) -> None:
    try:
        path = write(args.out, args.size, args.classes, args.seed)
    except ValueError as exc:
        raise cli.InputError(str(exc)) from None
    print(f"{path}: {MODEL_NAME} v{MODEL_VERSION}, input [1, 3, {args.size}, {args.size}], "
          f"output [1, {4 + args.classes}, {anchors(args.size)}]")


def main(argv: Sequence[str] | None = None) -> int:
    return cli.run(PROG, start, argv, description=__doc__, add_arguments=add_arguments)


if __name__ == "__main__":
    sys.exit(main())
