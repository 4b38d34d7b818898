"""A fine-tune against its base (irtools/finetune.py): ΔW's spectral metrics, distances, matching.

Truth: ΔW's eigenvalues from numpy's SVD of W - W_base built by hand; distances from WeightWatcher
0.7.7's own `matrix_distance` formulas applied literally, and from its `base_model=` and
`distances` runs on the same PyTorch models.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
safetensors_torch = pytest.importorskip("safetensors.torch")

from irtools.errors import IrtoolsError  # noqa: E402
from irtools.finetune import cka, compare, matrix_distances  # noqa: E402


class Net(torch.nn.Module):
    def __init__(self, width=48):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 16, 3)
        self.fc1 = torch.nn.Linear(40, width)
        self.fc2 = torch.nn.Linear(width, 24)

    def forward(self, x):
        h = self.conv(x).mean(dim=(2, 3)).repeat(1, 3)[:, :40]
        return self.fc2(self.fc1(h))


def pair(seed=0, noise=0.05):
    torch.manual_seed(seed)
    base = Net()
    ft = Net()
    ft.load_state_dict(base.state_dict())
    with torch.no_grad():
        for p in ft.parameters():
            p.add_(noise * torch.randn_like(p))
    return ft, base


def save(module, path):
    safetensors_torch.save_file({k: v.contiguous() for k, v in module.state_dict().items()}, str(path))
    return str(path)


def ww_cka(w1, w2):  # WeightWatcher 0.7.7's matrix_distance(method='cka'), literally
    dist = np.linalg.norm(np.dot(w1.T, w2))
    norm = np.sqrt(np.linalg.norm(np.dot(w1.T, w1)) * np.linalg.norm(np.dot(w2, w2.T)))
    return dist / (norm + 0.000001 if norm < 0.000001 else norm)


@pytest.mark.parametrize("shape", [(30, 7), (7, 30), (5, 5)])
def test_cka_and_distances_are_weightwatchers_formulas(shape, monkeypatch):
    import irtools.finetune as ft

    rng = np.random.default_rng(1)
    w1, w2 = rng.normal(size=shape), rng.normal(size=shape)
    assert cka(w1, w2) == pytest.approx(ww_cka(w1, w2), rel=1e-12)
    monkeypatch.setattr(ft, "CHUNK", 11)  # several chunks along the long side
    d2, b2, c = matrix_distances(w1, w2)
    assert d2 == pytest.approx(np.linalg.norm(w1 - w2) ** 2, rel=1e-12)
    assert b2 == pytest.approx(np.sum(w2 * w2), rel=1e-12)
    assert c == pytest.approx(ww_cka(w1, w2), rel=1e-12)
    assert cka(np.zeros(shape), np.zeros(shape)) == 0.0


def test_delta_rows_by_hand(tmp_path):
    ft, base = pair()
    result = compare(save(ft, tmp_path / "ft.safetensors"), save(base, tmp_path / "base.safetensors"),
                     keep_eigenvalues=True)
    rows = {r["name"]: (r, ev) for r, ev in zip(result.layers, result.eigenvalues)}
    assert set(rows) == {"fc1", "fc2", "conv"}
    sd_ft = {k: v.double().numpy() for k, v in ft.state_dict().items()}
    sd_b = {k: v.double().numpy() for k, v in base.state_dict().items()}
    for name in ("fc1", "fc2"):
        row, evals = rows[name]
        w, wb = sd_ft[f"{name}.weight"], sd_b[f"{name}.weight"]
        np.testing.assert_allclose(evals, np.sort(np.linalg.svd(w - wb, compute_uv=False) ** 2), rtol=1e-9)
        assert row["dist_raw"] == pytest.approx(np.linalg.norm(w - wb), rel=1e-9)
        assert row["dist_euclidean"] == pytest.approx(np.linalg.norm(w - wb), rel=1e-9)
        assert row["dist_cka"] == pytest.approx(ww_cka(w, wb), rel=1e-9)
        assert row["rel_distance"] == pytest.approx(np.linalg.norm(w - wb) / np.linalg.norm(wb), rel=1e-9)
        assert row["alpha_model"] > 0 and row["alpha_base"] > 0
    row, evals = rows["conv"]  # pooled kernel-position slices, eigenvalues x 1/2 like any conv
    d = sd_ft["conv.weight"] - sd_b["conv.weight"]
    slices = [d[:, :, i, j] for i in range(3) for j in range(3)]
    np.testing.assert_allclose(evals, 0.5 * np.sort(np.concatenate([np.linalg.svd(s, compute_uv=False) ** 2
                                                                    for s in slices])), rtol=1e-9)
    assert row["dist_raw"] == pytest.approx(np.linalg.norm(d), rel=1e-9)
    assert row["dist_euclidean"] == pytest.approx(np.mean([np.linalg.norm(s) for s in slices]), rel=1e-9)
    assert set(result.summary) >= {"alpha", "dist_raw", "alpha_model", "alpha_base"}


def test_one_sided_and_reshaped_layers_are_listed(tmp_path):
    ft, base = pair()
    sd = {k: v.contiguous() for k, v in ft.state_dict().items()}
    sd["extra.weight"] = torch.randn(20, 20)
    sd["fc1.weight"] = torch.randn(50, 40)
    safetensors_torch.save_file(sd, str(tmp_path / "ft.safetensors"))
    base_sd = {k: v.contiguous() for k, v in base.state_dict().items() if not k.startswith("fc2")}
    safetensors_torch.save_file(base_sd, str(tmp_path / "base.safetensors"))
    result = compare(str(tmp_path / "ft.safetensors"), str(tmp_path / "base.safetensors"), models=False)
    assert [r["name"] for r in result.layers] == ["conv"]
    reasons = {s["name"]: s["reason"] for s in result.skipped}
    assert reasons["extra"].startswith("in the model only")
    assert reasons["fc2"].startswith("in the model only")
    assert reasons["fc1"] == "shape differs from the base: (50, 40) vs (48, 40)"
    with pytest.raises(IrtoolsError, match="no layer of the model matches"):
        compare(str(tmp_path / "ft.safetensors"), save(Net(width=10).fc2, tmp_path / "other.safetensors"))


def test_graph_against_weights_file_matches_weights_against_weights(tmp_path):
    """Mixed sources: a PyTorch module (graph, layers named by node) against a safetensors base."""
    ft, base = pair(seed=3)
    base_file = save(base, tmp_path / "base.safetensors")
    files = compare(save(ft, tmp_path / "ft.safetensors"), base_file, models=False).details.set_index("name")
    graph = compare((ft, (torch.randn(1, 3, 8, 8),)), base_file, models=False).details
    assert len(graph) == 3
    by_param = {p.split(".")[0]: row for p, (_, row) in zip(graph["parameter"], graph.iterrows())}
    for name in ("fc1", "fc2", "conv"):
        for col in ("alpha", "lambda_max", "dist_raw", "dist_cka"):
            assert by_param[name][col] == pytest.approx(files.loc[name, col], rel=1e-9)


def test_against_weightwatcher_base_model_and_distances(tmp_path):
    ww = pytest.importorskip("weightwatcher")
    logging.getLogger("weightwatcher").setLevel(logging.ERROR)
    ft, base = pair(seed=5, noise=0.3)
    ours = compare(save(ft, tmp_path / "ft.safetensors"), save(base, tmp_path / "base.safetensors")).details
    ours = ours.set_index("name")
    theirs = ww.WeightWatcher(model=ft, base_model=base).analyze()
    theirs = theirs.set_index("name")
    for name in ("fc1", "fc2", "conv"):
        for col in ("alpha", "lambda_max", "log_norm", "stable_rank"):
            assert ours.loc[name, col] == pytest.approx(theirs.loc[name, col], rel=1e-6, abs=1e-9), (name, col)
    watcher = ww.WeightWatcher()
    for method, col in (("raw", "dist_raw"), ("cka", "dist_cka"), ("euclidean", "dist_euclidean")):
        _, _, dist = watcher.distances(ft, base, method=method)
        dist = dist.set_index("name")
        for name in ("fc1", "fc2"):
            assert ours.loc[name, col] == pytest.approx(dist.loc[name, "delta_W"], rel=1e-6), (method, name)


def test_adapter_against_base_is_its_update(tmp_path):
    peft = pytest.importorskip("peft")
    torch.manual_seed(0)
    base = Net()
    model = peft.get_peft_model(base, peft.LoraConfig(r=8, lora_alpha=16, target_modules=["fc1"]))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_()
    model.save_pretrained(tmp_path / "adapter")
    base_sd = {k.replace("base_model.model.", "").replace(".base_layer", ""): v.detach().clone().contiguous()
               for k, v in model.state_dict().items() if "lora_" not in k}
    safetensors_torch.save_file(base_sd, str(tmp_path / "base.safetensors"))
    result = compare(str(tmp_path / "adapter"), str(tmp_path / "base.safetensors"), keep_eigenvalues=True)
    assert [r["name"] for r in result.layers] == ["fc1"]
    assert {s["name"]: s["reason"] for s in result.skipped}["fc2"] == "not adapted: identical to the base"
    delta = model.base_model.model.fc1.get_delta_weight("default").detach().double().numpy()
    evals = result.eigenvalues[0]
    np.testing.assert_allclose(evals[-8:], np.sort(np.linalg.svd(delta, compute_uv=False) ** 2)[-8:], rtol=1e-5)
    assert result.layers[0]["dist_raw"] == pytest.approx(np.linalg.norm(delta), rel=1e-5)
    assert result.layers[0]["r"] == 8 and result.layers[0]["scale"] == 2.0
    assert not math.isnan(result.layers[0]["alpha_model"])
    # the same against the base as a PyTorch module (a graph: layers named by node, matched by parameter)
    torch.manual_seed(0)
    graph = compare(str(tmp_path / "adapter"), (Net(), (torch.randn(1, 3, 8, 8),)), keep_eigenvalues=True)
    assert [r["name"] for r in graph.layers] == ["fc1"]
    np.testing.assert_allclose(graph.eigenvalues[0], evals, rtol=1e-9)


def test_report_section(tmp_path):
    import base64
    import re

    from irtools.reports.finetune import finetune_section

    ft, base = pair(seed=2, noise=0.2)
    sd = {k: v.contiguous() for k, v in ft.state_dict().items()}
    sd["fc1.weight"] = sd["fc1.weight"] * 3  # fc1 moves most
    safetensors_torch.save_file(sd, str(tmp_path / "ft.safetensors"))
    base_sd = {k: v.contiguous() for k, v in base.state_dict().items()}
    base_sd["<b>only.weight"] = torch.randn(20, 20)
    safetensors_torch.save_file(base_sd, str(tmp_path / "base.safetensors"))
    result = compare(str(tmp_path / "ft.safetensors"), str(tmp_path / "base.safetensors"))
    assert result.moved_most(1)[0]["name"] == "fc1"
    page = finetune_section(result)
    pngs = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(pngs) == 2 and all(base64.b64decode(p).startswith(b"\x89PNG") for p in pngs)
    table = page.split('class="finetune-moved"')[1]
    assert table.index(">fc1<") < table.index(">fc2<") and ">conv<" in table
    assert "&lt;b&gt;only: in the base only" in page and "<b>only" not in page


def _np_distances(w, wb):
    """raw, euclidean, CKA and relative distance of one layer by numpy, whole (matrices: a list)."""
    raw = math.sqrt(sum(np.sum((x - y) ** 2) for x, y in zip(w, wb)))
    return {"dist_raw": raw, "dist_euclidean": float(np.mean([np.linalg.norm(x - y) for x, y in zip(w, wb)])),
            "dist_cka": float(np.mean([ww_cka(x, y) for x, y in zip(w, wb)])),
            "rel_distance": raw / math.sqrt(sum(np.sum(y * y) for y in wb))}


def test_analysis_options_and_size_limits(tmp_path):
    """`options=` (what `irtools analyze --base` passes): its limits apply to the spectral part; a layer
    they leave out still gets its distances, in a row that says why it has no spectral metrics."""
    from irtools.options import AnalysisOptions

    ft, base = pair(seed=4)
    a, b = save(ft, tmp_path / "ft.safetensors"), save(base, tmp_path / "base.safetensors")
    result = compare(a, b, options=AnalysisOptions(base=b, min_evals=30))
    rows = {r["name"]: r for r in result.layers}
    assert [r["name"] for r in result.layers if r["spectral_skipped"] is None] == ["fc1"]  # 40 evals; fc2 24,
    # conv 27 (9 slices x 3)
    assert rows["fc2"]["spectral_skipped"].startswith("24 eigenvalues < min_evals 30: spectral metrics skipped")
    assert rows["fc2"]["alpha"] is None and rows["fc2"]["alpha_model"] != rows["fc2"]["alpha_model"]  # NaN
    sd_ft = {k: v.double().numpy() for k, v in ft.state_dict().items()}
    sd_b = {k: v.double().numpy() for k, v in base.state_dict().items()}
    for key, value in _np_distances([sd_ft["fc2.weight"]], [sd_b["fc2.weight"]]).items():
        assert rows["fc2"][key] == pytest.approx(value, rel=1e-9)
    assert "fc2" not in {s["name"] for s in result.skipped}


def test_distances_of_layers_over_the_size_cap(tmp_path, monkeypatch):
    """N > max_N: no eigensolve (the spectral columns are empty and the row says it was skipped for size),
    but raw, euclidean, CKA and relative distance as numpy computes them on the whole tensors, reduced in
    chunks; the layers under the cap are analysed as before, rows in the model's layer order."""
    import irtools.finetune as finetune

    ft, base = pair(seed=5, noise=0.1)
    a, b = save(ft, tmp_path / "ft.safetensors"), save(base, tmp_path / "base.safetensors")
    full = compare(a, b, keep_eigenvalues=True)
    monkeypatch.setattr(finetune, "CHUNK", 97)  # many chunks along each long side
    capped = compare(a, b, max_n=40, keep_eigenvalues=True)  # fc1 is 48 x 40, fc2 24 x 48, conv 16 x 3 x 9
    assert [r["name"] for r in capped.layers] == [r["name"] for r in full.layers]
    assert [r["layer_id"] for r in capped.layers] == list(range(len(capped.layers)))
    rows = {r["name"]: (r, ev) for r, ev in zip(capped.layers, capped.eigenvalues)}
    ref = {r["name"]: r for r in full.layers}
    sd_ft = {k: v.double().numpy() for k, v in ft.state_dict().items()}
    sd_b = {k: v.double().numpy() for k, v in base.state_dict().items()}
    for name in ("fc1", "fc2"):
        row, evals = rows[name]
        truth = _np_distances([sd_ft[f"{name}.weight"]], [sd_b[f"{name}.weight"]])
        for key, value in truth.items():
            assert row[key] == pytest.approx(value, rel=1e-9), (name, key)
            assert ref[name][key] == pytest.approx(value, rel=1e-9)
    for name, shape in (("fc1", (48, 40)), ("fc2", (48, 24))):
        row, evals = rows[name]
        assert row["spectral_skipped"] == "N = 48 > max_N 40: spectral metrics skipped, distances computed"
        assert row["alpha"] is None and row["lambda_max"] is None and evals.size == 0
        assert (row["N"], row["M"]) == shape and row["alpha_model"] != row["alpha_model"]  # NaN: not fitted
    conv, evals = rows["conv"]  # N = 16, under the cap: the spectral part as without the cap
    assert conv["spectral_skipped"] is None and conv["alpha"] == pytest.approx(ref["conv"]["alpha"], rel=1e-12)
    np.testing.assert_allclose(evals, full.eigenvalues[[r["name"] for r in full.layers].index("conv")])
    # the conv's kernel-position slices: euclidean and CKA are means over the 9 slices
    w, wb = sd_ft["conv.weight"], sd_b["conv.weight"]
    slices = [(slice(None), slice(None), i, j) for i in range(3) for j in range(3)]
    for key, value in _np_distances([w[s] for s in slices], [wb[s] for s in slices]).items():
        assert rows["conv"][0][key] == pytest.approx(value, rel=1e-9)
    assert capped.summary["rel_distance"] == pytest.approx(full.summary["rel_distance"], rel=1e-12)
    assert not any("max_N" in s["reason"] for s in capped.skipped)
    assert any("distances only" in n for n in capped.notes)
    assert capped.columns.count("spectral_skipped") == 1 and len(capped.columns) == len(set(capped.columns))
    from irtools.reports.finetune import moved_table

    table = moved_table(capped)  # the page's table of the layers that moved most says why a row has no alpha
    assert "<th>spectral_skipped</th>" in table and table.count("spectral metrics skipped") == 2


def test_series_drift(tmp_path):
    """A training run's checkpoints against the base: the drift grows with the noise added."""
    from irtools.finetune import compare_series
    from irtools.reports.finetune import drift_section

    torch.manual_seed(0)
    base = Net()
    paths = []
    for k, noise in enumerate((0.01, 0.05, 0.2)):
        ft = Net()
        ft.load_state_dict(base.state_dict())
        with torch.no_grad():
            for p in ft.parameters():
                p.add_(noise * torch.randn_like(p))
        paths.append(save(ft, tmp_path / f"step{k}.safetensors"))
    results = compare_series(paths, save(base, tmp_path / "base.safetensors"), models=False)
    drift = [r.summary["rel_distance"] for r in results]
    assert drift == sorted(drift) and drift[0] > 0
    page = drift_section(results, labels=["step0", "step1", "step2"])
    assert page.count("<tr data-checkpoint=") == 3 and page.count("data:image/png;base64,") == 2
    for k, label in enumerate(("step0", "step1", "step2")):  # each checkpoint's mean relative distance, whole
        assert f'<tr data-checkpoint="{label}"><td>{label}</td><td data-v="{drift[k]!r}">' in page
    assert page.count("<tr data-layer=") == min(8, len(results[-1].layers))
