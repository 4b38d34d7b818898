"""Resampling: Resize / Upsample and a constant GridSample (their dependencies from onnxruntime
running the node itself), GridSample and RoiAlign on data-chosen positions, AffineGrid."""

from __future__ import annotations

import math

import numpy as np
import onnx_ir as ir

from irtools import budget
from irtools.errors import UnsupportedError
from irtools.passes.context_counts.context import RuleContext
from irtools.passes.context_counts.registry import register


@register("", "Resize", "Upsample")
def _resize(n: RuleContext) -> None:
    """Resize / Upsample: separable, so each resized axis has a 0/1 dependency matrix (output x input).

    The matrices come from onnxruntime running the node's own Resize on an identity along that
    axis, so every mode and coordinate transformation is the runtime's; an output element
    depends on the input elements with a nonzero interpolation weight.
    """
    x_shape, out = n.in_shape(0), n.out()
    counts = out
    for axis, (size_in, size_out) in enumerate(zip(x_shape, out.shape, strict=True)):
        if size_in == size_out:
            continue
        dep = _resize_dependency(n, axis, size_in, size_out, out.shape)
        counts = np.moveaxis(np.tensordot(counts, dep, axes=([axis], [0])), -1, axis)
    n.give(0, counts)


def _resize_dependency(n: RuleContext, axis: int, size_in: int, size_out: int, out_shape) -> np.ndarray:
    import onnx
    import onnxruntime as ort

    attrs = [a for name, a in n.node.attributes.items() if name not in ("axes",)]
    node = onnx.helper.make_node("Resize", ["x", "", "", "sizes"], ["y"])
    for a in attrs:
        node.attribute.append(ir.serde.serialize_attribute(a))
    if n.node.op_type == "Upsample":  # Upsample(mode) = Resize(mode, asymmetric, floor)
        mode = n.attr("mode", "nearest")
        del node.attribute[:]
        node.attribute.extend([onnx.helper.make_attribute("mode", mode if isinstance(mode, str) else mode.decode()),
                               onnx.helper.make_attribute("coordinate_transformation_mode", "asymmetric"),
                               onnx.helper.make_attribute("nearest_mode", "floor")])
    if n.has_input(1) and n.node.op_type == "Resize":
        roi = n.const(1) if n.const(1).size else None
        if roi is not None and roi.size:
            raise UnsupportedError(f"Resize node '{n.name}': a region of interest is not supported", n.model.path)
    graph = onnx.helper.make_graph(
        [node], "dep", [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [size_in, size_in])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
        [onnx.numpy_helper.from_array(np.array([size_in, size_out], dtype=np.int64), "sizes")])
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 19)])
    model.ir_version = 9
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    y = sess.run(None, {"x": np.eye(size_in, dtype=np.float32)})[0]  # row i: how output positions use input i
    return (np.abs(y.T) > 1e-12).astype(np.float64)  # (output, input)


#: Input taps per output point and spatial axis of GridSample's modes (nearest reads one).
_GRID_TAPS = {"nearest": 1, "bilinear": 2, "linear": 2, "bicubic": 4, "cubic": 4}


@register("", "GridSample")
def _grid_sample(n: RuleContext) -> None:
    """GridSample(X, grid) = sum over taps t of weight_t(grid) * X[index_t(grid)]: the indices are
    chosen by the data, so, as for Gather with data-chosen indices (one_hot(ids) @ table), every
    element of X's (n, c) plane may be read by every tap of every output point: it takes the
    plane's summed output counts times the taps. A grid coordinate reaches every tap weight
    (bilinear (1 - dx)(1 - dy) uses both) and through it every channel of its output point;
    nearest sampling has no weights: the grid only chooses."""
    mode = n.attr("mode", "linear")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    x_shape = n.in_shape(0)
    out = n.out()  # (N, C, *out_spatial)
    rank = len(x_shape) - 2
    taps = _GRID_TAPS[mode] ** rank
    if n.is_const(1):  # a constant grid reads known pixels: the dependency, as Resize finds it
        dep = _grid_dependency(n, x_shape)  # (N, pixels in, points out)
        flat = out.reshape(out.shape[0], out.shape[1], -1)
        n.give(0, np.einsum("nkp,ncp->nck", dep, flat).reshape(x_shape))
    else:
        plane = out.reshape(out.shape[0], out.shape[1], -1).sum(axis=2) * taps  # (N, C)
        n.give(0, np.broadcast_to(plane.reshape(plane.shape + (1,) * rank), x_shape))
    if mode != "nearest" and n.wants(1):
        per_point = out.sum(axis=1) * taps  # (N, *out_spatial)
        n.give(1, np.broadcast_to(per_point[..., None], n.in_shape(1)))


def _grid_dependency(n: RuleContext, x_shape) -> np.ndarray:
    """0/1 (N, input pixels, output points): onnxruntime runs the node's own GridSample on one
    one-hot input plane per pixel; a pixel feeds a point when its interpolation weight is nonzero."""
    import onnx
    import onnxruntime as ort

    grid = np.asarray(n.const(1), dtype=np.float32)
    pixels = math.prod(x_shape[2:])
    budget.check(8.0 * x_shape[0] * pixels * math.prod(grid.shape[1:-1]), f"dependency of GridSample '{n.name}'",
                 n.model.path)
    node = onnx.helper.make_node("GridSample", ["x", "g"], ["y"])
    for a in n.node.attributes.values():
        node.attribute.append(ir.serde.serialize_attribute(a))
    basis = np.broadcast_to(np.eye(pixels, dtype=np.float32).reshape((1, pixels) + tuple(x_shape[2:])),
                            (x_shape[0], pixels) + tuple(x_shape[2:]))
    graph = onnx.helper.make_graph(
        [node], "dep", [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, basis.shape),
                        onnx.helper.make_tensor_value_info("g", onnx.TensorProto.FLOAT, grid.shape)],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)])
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", max(n.model.opset, 20))])
    model.ir_version = 9
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    y = sess.run(None, {"x": np.ascontiguousarray(basis), "g": grid})[0]
    return (np.abs(y.reshape(x_shape[0], pixels, -1)) > 1e-12).astype(np.float64)


@register("", "RoiAlign")
def _roi_align(n: RuleContext) -> None:
    """RoiAlign(X, rois, batch_indices): each output bin averages (or maxes) sampling_ratio^2
    bilinear samples of 4 taps at positions the rois choose. As for GridSample, the data choose
    the positions and the image, so every element of a channel plane may be read by every tap of
    every bin of every roi of that channel; a roi coordinate moves every sample of its roi, so it
    reaches every tap weight of every bin and channel. sampling_ratio 0 (adaptive: the number of
    samples depends on the roi's size) cannot be counted."""
    ratio = int(n.attr("sampling_ratio", 0))
    if ratio <= 0:
        raise UnsupportedError(f"RoiAlign node '{n.name}': sampling_ratio 0 takes a number of samples that depends on "
                               f"each roi's size (data): cannot count its contexts exactly", n.model.path)
    taps = 4 * ratio * ratio
    out = n.out()  # (R, C, oh, ow)
    per_channel = out.sum(axis=(0, 2, 3)) * taps  # (C,)
    x_shape = n.in_shape(0)
    n.give(0, np.broadcast_to(per_channel[None, :, None, None], x_shape))
    if n.wants(1):
        n.give(1, np.broadcast_to((out.sum(axis=(1, 2, 3)) * taps)[:, None], n.in_shape(1)))


@register("", "AffineGrid")
def _affine_grid(n: RuleContext) -> None:
    """AffineGrid(theta (N, d, d + 1), size): grid[n, ..., i] = theta[n, i, :] . (coords, 1), so
    theta[n, i, j] reaches component i of every grid point."""
    out = n.out()  # (N, *spatial, d)
    per = out.reshape(out.shape[0], -1, out.shape[-1]).sum(axis=1)  # (N, d)
    n.give(0, np.broadcast_to(per[:, :, None], n.in_shape(0)))
