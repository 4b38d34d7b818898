"""`irtools.compat.weightwatcher` against WeightWatcher 0.7.7 itself, on the same small models.

Same columns, column order, dtypes and index; same layer ids, names and types; values to 1e-6
wherever both analyse a layer (small layers with < 20 eigenvalues included); the same `layers=`
selection; WeightWatcher's figure files for `plot=True`.
"""

from __future__ import annotations

import logging
import os

import numpy as np
import pandas as pd
import pytest

torch = pytest.importorskip("torch")
weightwatcher = pytest.importorskip("weightwatcher")
nn = torch.nn

import irtools.compat.weightwatcher as ww
from irtools.errors import IrtoolsError

logging.getLogger("weightwatcher").setLevel(logging.ERROR)
STRING_COLUMNS = ("name", "longname", "layer_type", "status", "warning")


class Conv1D(nn.Module):
    """A GPT-2 style (transformers) Conv1D: a 2-D (in, out) weight, typed conv1d by its class name."""

    def __init__(self, n_in, n_out):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n_in, n_out) * 0.1)


class Net(nn.Module):
    """Embedding (12 eigenvalues: small-sample fit), pooled Conv2d, Linear stack incl. a 10-eigenvalue
    layer, a rank-6 layer, a 4-eigenvalue layer (skipped by both), a LayerNorm (no matrix) and a GPT-2
    style Conv1D."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(50, 12)
        self.conv = nn.Conv2d(3, 16, 3)
        self.block = nn.Sequential(nn.Linear(64, 40), nn.ReLU(), nn.Linear(40, 30))
        self.low = nn.Linear(30, 24)
        self.head = nn.Linear(24, 10)
        self.tiny = nn.Linear(10, 4)
        self.norm = nn.LayerNorm(4)
        self.proj = Conv1D(24, 48)
        with torch.no_grad():
            g = torch.Generator().manual_seed(1)
            self.low.weight[:, 6:] = 0.0  # rank 6
            self.emb.weight.copy_(torch.randn(50, 12, generator=g) ** 3)  # heavier tail than Gaussian


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return Net()


@pytest.fixture(scope="module")
def reference(net):
    """WeightWatcher's own tables (one plain run, one with mp_fit)."""
    watcher = weightwatcher.WeightWatcher(model=net)
    plain = watcher.analyze()
    return {"plain": plain, "plain_summary": watcher.get_summary(), "mp": watcher.analyze(mp_fit=True),
            "mp_summary": watcher.get_summary()}


def assert_same_table(ours: pd.DataFrame, theirs: pd.DataFrame, atol: float = 1e-6, differ=()) -> None:
    """Same columns in the same order, same dtypes and index; numbers to `atol` (relative 1e-6), except
    the (layer name, column) cells in `differ` (checked by the caller)."""
    assert list(ours.columns) == list(theirs.columns)
    assert ours.index.equals(theirs.index)
    assert ours.dtypes.to_dict() == theirs.dtypes.to_dict()
    ours, theirs = ours.copy(), theirs.copy()
    for name, column in differ:
        ours.loc[ours.name == name, column] = theirs.loc[theirs.name == name, column].to_numpy()
    for column in theirs.columns:
        if column in STRING_COLUMNS or theirs[column].dtype == bool:
            assert list(ours[column]) == list(theirs[column]), column
        else:
            np.testing.assert_allclose(ours[column].to_numpy(float), theirs[column].to_numpy(float), rtol=1e-6,
                                       atol=atol, err_msg=column)


#: WeightWatcher's one known wrong cell here: with fewer than 8 eigenvalues above 1e-5 (the rank-6 layer)
#: its small-sample fit falls back to the whole sample but reports the sigma it computed before, from
#: alpha = 0: sigma = -1 / sqrt(n). irtools reports (alpha - 1) / sqrt(n) for the alpha both report.
SIGMA_FALLBACK = (("low", "sigma"),)


def check_sigma_fallback(ours: pd.DataFrame, theirs: pd.DataFrame) -> None:
    mine, ref = ours.set_index("name").loc["low"], theirs.set_index("name").loc["low"]
    assert mine.num_pl_spikes == ref.num_pl_spikes == 6
    np.testing.assert_allclose(ref.sigma, -1 / np.sqrt(6))
    np.testing.assert_allclose(mine.sigma, (ref.alpha - 1) / np.sqrt(6), rtol=1e-9)


def test_details_match_weightwatcher(net, reference):
    theirs = reference["plain"]
    ours = ww.WeightWatcher(model=net).analyze()
    assert list(theirs.layer_id) == [1, 2, 4, 6, 7, 8, 11]  # the model's named_modules() positions
    assert_same_table(ours, theirs, differ=SIGMA_FALLBACK)
    check_sigma_fallback(ours, theirs)
    low = ours.set_index("name").loc["low"]
    assert (low.rank_loss, low.matrix_rank) == (18, 6)  # rank 6 of 24: both see the loss
    assert ours.num_evals.min() < 20  # small-sample fits are part of the comparison


def test_mp_fit_and_summary_match_weightwatcher(net, reference):
    watcher = ww.WeightWatcher(model=net)
    ours = watcher.analyze(mp_fit=True)
    assert {"num_spikes", "sigma_mp", "mp_softrank", "W_scale", "bulk_max", "bulk_min"} <= set(ours.columns)
    assert_same_table(ours, reference["mp"], differ=SIGMA_FALLBACK)
    ours_summary = watcher.get_summary()
    assert ours_summary.keys() == reference["mp_summary"].keys()
    np.testing.assert_allclose(list(ours_summary.values()), list(reference["mp_summary"].values()), rtol=1e-6)
    assert watcher.get_details() is ours
    plain = ww.WeightWatcher(model=net)
    plain.analyze()
    assert plain.get_summary().keys() == reference["plain_summary"].keys()  # no mp_softrank without mp_fit
    np.testing.assert_allclose(list(plain.get_summary().values()), list(reference["plain_summary"].values()),
                               rtol=1e-6)


@pytest.mark.parametrize("layers", [[], [4], [2, 6, 99], [-4, -6], ["0"], ["-emb", "-low"], ["dense"],
                                    ["conv2d", "embedding"], ["dense", 6], ["dense", "0"]])
def test_layer_selection_matches_weightwatcher(net, layers):
    """`layers=` by id (keep / skip), name (keep / '-skip'), type, and the mixes (a later kind wins)."""
    theirs = weightwatcher.WeightWatcher(model=net).describe(layers=layers)
    ours = ww.WeightWatcher(model=net).describe(layers=layers)
    pd.testing.assert_frame_equal(ours, theirs)
    assert list(ww.WeightWatcher(model=net).analyze(layers=layers).layer_id) == list(theirs.layer_id)


def test_size_limits_match_weightwatcher(net):
    for limits in ({"min_evals": 20}, {"max_evals": 30}, {"min_evals": 1, "max_evals": 40, "max_N": 45}):
        theirs = weightwatcher.WeightWatcher(model=net).describe(**limits)
        pd.testing.assert_frame_equal(ww.WeightWatcher(model=net).describe(**limits), theirs)
    theirs = weightwatcher.WeightWatcher(model=net).describe(min_evals=1)
    assert list(ww.WeightWatcher(model=net).analyze(min_evals=1).layer_id) == list(theirs.layer_id)
    assert 9 in list(theirs.layer_id)  # the 4-eigenvalue layer, analysed with min_evals=1


def test_start_ids_and_model_given_to_analyze(net, reference):
    watcher = ww.WeightWatcher()
    assert list(watcher.analyze(model=net, start_ids=1).layer_id) == [i + 1 for i in reference["plain"].layer_id]


def test_state_dict_and_onnx_match_weightwatcher(net, tmp_path):
    """A state dict (ids from 1, types by rank) and an ONNX ModelProto (every initializer, id = its index),
    as WeightWatcher reads them; an ONNX file path and a safetensors folder read the same way."""
    onnx = pytest.importorskip("onnx")
    state = net.state_dict()
    assert_same_table(ww.WeightWatcher(model=state).analyze(), weightwatcher.WeightWatcher(model=state).analyze(),
                      differ=SIGMA_FALLBACK)

    inits = [onnx.numpy_helper.from_array(v.numpy(), k) for k, v in state.items()]
    inits.insert(1, onnx.numpy_helper.from_array(np.array([2, 3], dtype=np.int64), "shape"))
    big = np.random.default_rng(0).standard_normal((300, 256)).astype(np.float32)  # > 256 KiB: read lazily
    inits.append(onnx.numpy_helper.from_array(big, "big.weight"))
    proto = onnx.helper.make_model(onnx.helper.make_graph([], "g", [], [], initializer=inits))
    theirs = weightwatcher.WeightWatcher(model=proto).analyze()
    ours = ww.WeightWatcher(model=proto).analyze()
    assert_same_table(ours, theirs, differ=(("low.weight", "sigma"),))
    assert "big.weight" in list(ours.name)
    path = tmp_path / "net.onnx"
    onnx.save(proto, str(path))
    pd.testing.assert_frame_equal(ww.WeightWatcher(model=str(path)).analyze(), ours)

    safetensors_torch = pytest.importorskip("safetensors.torch")
    folder = tmp_path / "hf"
    folder.mkdir()
    safetensors_torch.save_file({k: v.contiguous() for k, v in state.items()}, str(folder / "model.safetensors"))
    assert_same_table(ww.WeightWatcher(model=str(folder)).analyze(),
                      weightwatcher.WeightWatcher(model=str(folder)).analyze(), differ=SIGMA_FALLBACK)


def test_get_esd_matches_weightwatcher(net):
    theirs, ours = weightwatcher.WeightWatcher(model=net), ww.WeightWatcher(model=net)
    for layer in (2, "0", "emb"):  # the conv (unscaled here, unlike in analyze), by name, an embedding
        np.testing.assert_allclose(ours.get_ESD(layer=layer), theirs.get_ESD(layer=layer), rtol=1e-9, atol=1e-12)
    assert ours.get_ESD(layer=2, random=True).shape == theirs.get_ESD(layer=2, random=True).shape  # 5 shuffles
    with pytest.raises(IrtoolsError, match="tiny"):
        ours.get_ESD(layer="tiny")  # 4 eigenvalues: not a layer describe() lists


def test_conv1d_is_analysed_as_pooled_slices():
    """WeightWatcher mis-reads 3-D kernels (min of the three dims as M) and skips them; irtools pools the
    k (out, in) slices like a Conv2d: checked against numpy's SVD of each slice."""
    torch.manual_seed(3)
    model = nn.Sequential(nn.Conv1d(16, 32, 5))
    row = ww.WeightWatcher(model=model).analyze().iloc[0]
    w = model[0].weight.detach().numpy().astype(np.float64)
    evals = np.sort(np.concatenate([np.linalg.svd(w[:, :, k], compute_uv=False) ** 2 for k in range(5)]) * 0.5)
    assert (row.layer_type, row.N, row.M, row.rf, row.num_evals) == ("conv1d", 32, 16, 5, 80)
    np.testing.assert_allclose([row.lambda_max, row.norm], [evals[-1], evals.sum()], rtol=1e-9)
    assert weightwatcher.WeightWatcher(model=model).analyze().empty


def test_plot_and_randomize_match_weightwatcher(tmp_path, monkeypatch):
    """plot=True writes WeightWatcher's files (esd..esd5, mpfit1 for a square layer, mpfit2, randesd1/2);
    randomize gives its columns, with values a shuffled matrix of the same weights gives WeightWatcher."""
    torch.manual_seed(5)
    model = nn.Sequential(nn.Linear(40, 40))
    options = {"plot": True, "randomize": True}  # randomize fits MP to the random ESD: mpfit files too
    theirs = weightwatcher.WeightWatcher(model=model).analyze(savefig=str(tmp_path / "theirs"), **options)
    ours = ww.WeightWatcher(model=model).analyze(savefig=str(tmp_path / "ours"), **options)
    files = sorted(os.listdir(tmp_path / "theirs"))
    assert {"ww.layer1.mpfit1.png", "ww.layer1.esd5.png", "ww.layer1.randesd2.png"} <= set(files)  # 0: Sequential
    assert sorted(os.listdir(tmp_path / "ours")) == files
    assert all((tmp_path / "ours" / f).read_bytes().startswith(b"\x89PNG") for f in files)

    assert list(ours.columns) == list(theirs.columns)
    assert ours.dtypes.to_dict() == theirs.dtypes.to_dict()
    mine, ref = ours.iloc[0], theirs.iloc[0]
    np.testing.assert_allclose(mine.ww_softrank, mine.max_rand_eval / mine.lambda_max)
    np.testing.assert_allclose(mine.ww_maxdist, mine.lambda_max - mine.max_rand_eval)
    assert mine.num_traps == mine.rand_num_spikes
    for column in ("max_rand_eval", "rand_sigma_mp", "rand_bulk_max", "rand_W_scale"):  # random: 25 %
        assert abs(np.log(mine[column] / ref[column])) < np.log(1.25), column
    assert 0.0 < mine.rand_distance < 0.1 and 0.0 < ref.rand_distance < 0.1
    again = ww.WeightWatcher(model=model).analyze(randomize=True)
    assert again.rand_distance.iloc[0] == mine.rand_distance  # seeded

    monkeypatch.chdir(tmp_path)
    ww.WeightWatcher(model=model).analyze(plot=True, start_ids=2)  # WeightWatcher's default folder
    assert sorted(os.listdir(tmp_path / "ww-img")) == [f"ww.layer3.esd{s}.png" for s in ("", "2", "3", "4", "5")]
    ww.WeightWatcher(model=model).analyze(plot=True, savefig=False)
    assert len(os.listdir(tmp_path / "ww-img")) == 5


def test_degenerate_layers_are_failed_fits_not_numbers(tmp_path):
    """All-zero and constant weights: status 'failed', warning 'degenerate', NaN metrics (WeightWatcher
    writes alpha = -1 and averages it); mp_fit, randomize and plot do not fail on them, and get_summary
    averages over the fitted layers only."""
    torch.manual_seed(6)
    model = nn.Sequential(nn.Linear(30, 20), nn.Linear(20, 20), nn.Conv2d(4, 8, 3), nn.Linear(20, 40))
    with torch.no_grad():
        model[0].weight.zero_()
        model[1].weight.fill_(0.3)
        model[2].weight.zero_()
    watcher = ww.WeightWatcher(model=model)
    assert len(watcher.analyze(plot=True, savefig=str(tmp_path))) == 4
    assert len(os.listdir(tmp_path)) == 4 * 5
    details = watcher.analyze(mp_fit=True, randomize=True)
    bad, good = details[details.layer_id < 4], details[details.layer_id == 4]
    assert list(bad.status) == ["failed"] * 3 and list(bad.warning) == ["degenerate"] * 3
    assert bad[["alpha", "D", "sigma_mp", "rand_sigma_mp"]].isna().all().all()
    assert list(bad.rank_loss) == [20, 19, 36]  # zero: rank 0; constant: rank 1
    assert good.status.iloc[0] == "success"
    assert watcher.get_summary()["alpha"] == good.alpha.iloc[0]


def test_unsupported_options_are_refused_by_name(net):
    watcher = ww.WeightWatcher(model=net)
    for option, value in (("conv2d_fft", True), ("fit", "TPL"), ("xmax", "force"), ("fix_fingers", "xmin_fit"),
                          ("pl_package", "powerlaw"), ("intra", True), ("max_fingers", 0)):
        with pytest.raises(ww.UnsupportedOptionError, match=option) as caught:
            watcher.analyze(**{option: value})
        assert isinstance(caught.value, IrtoolsError) and isinstance(caught.value, ValueError)
    watcher.analyze(pool=True, svd_method="accurate", layers=[4])  # the "off" values are accepted
    with pytest.raises(TypeError, match="no_such_option"):
        watcher.analyze(no_such_option=1)
    with pytest.raises(ww.UnsupportedOptionError, match="option channels=<Net> ") as caught:
        watcher.analyze(channels=net)  # the value's type, never the model's repr
    assert "Sequential" not in str(caught.value) and len(str(caught.value)) < 200
    with pytest.raises(ww.UnsupportedOptionError, match="peft must be .* not a Net"):
        watcher.analyze(peft=net)
    with pytest.raises(ww.UnsupportedOptionError, match="layers"):
        watcher.describe(layers=[2, -4])
    with pytest.raises(ww.UnsupportedMethodError, match="get_Weights"):
        watcher.get_Weights(layer=2)
    assert hasattr(watcher, "SVDSmoothing") and not hasattr(watcher, "analyze_vectors")
    with pytest.raises(IrtoolsError, match="int"):
        ww.WeightWatcher(model=42).analyze()


@pytest.mark.slow
def test_keras_model_matches_weightwatcher():
    """Keras: model.layers, (k, k, in, out) kernels and (in, out) dense kernels (importing TF takes ~15 s)."""
    keras = pytest.importorskip("keras")
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(16, 3), keras.layers.Flatten(),
                              keras.layers.Dense(40), keras.layers.Dense(12), keras.layers.Dense(4)])
    assert_same_table(ww.WeightWatcher(model=model).analyze(), weightwatcher.WeightWatcher(model=model).analyze())


# -- peft=, base_model=, detX=, distances() --------------------------------------------------------------

class Adapted(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3)
        self.fc1 = nn.Linear(40, 48)
        self.fc2 = nn.Linear(48, 24)
        self.fc3 = nn.Linear(24, 30)


def peft_model(**config):
    peft = pytest.importorskip("peft")
    torch.manual_seed(0)
    model = peft.get_peft_model(Adapted(), peft.LoraConfig(**{"target_modules": ["conv", "fc1", "fc2", "fc3"],
                                                              **config}))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_()
    return model


def assert_close_table(ours, theirs):
    """Same columns (order) and rows; numbers to 1e-6 relative."""
    assert list(ours.columns) == list(theirs.columns)
    assert len(ours) == len(theirs)
    for column in theirs.columns:
        numeric = pd.api.types.is_numeric_dtype(theirs[column]) or all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in theirs[column])
        if not numeric or column in STRING_COLUMNS or theirs[column].dtype == bool:
            assert list(ours[column]) == list(theirs[column]), column
        else:
            np.testing.assert_allclose(ours[column].to_numpy(float), theirs[column].to_numpy(float), rtol=1e-6,
                                       atol=1e-9, err_msg=column)


@pytest.mark.parametrize("config", [
    {"r": 8, "lora_alpha": 16},
    {"r": 12, "lora_alpha": 5, "use_rslora": True},
    {"r": 8, "rank_pattern": {"fc2": 16, "fc3": 10}, "alpha_pattern": {"fc1": 3}},
])
@pytest.mark.parametrize("peft_value", [True, "with_base", "peft_only"])
def test_peft_matches_weightwatcher(tmp_path, config, peft_value):
    model = peft_model(**config)
    folder = tmp_path / "adapter"
    model.save_pretrained(folder)
    for source in (model, str(folder)):
        if peft_value == "with_base" and source != model:  # the folder: the layer before lora_B is lora_A
            with pytest.raises(ValueError, match="broadcast"):
                weightwatcher.WeightWatcher(model=source).analyze(peft=peft_value)
            with pytest.raises(IrtoolsError, match="is not the base of B·A"):
                ww.WeightWatcher(model=source).analyze(peft=peft_value)
            continue
        theirs = weightwatcher.WeightWatcher(model=source).analyze(peft=peft_value)
        ours = ww.WeightWatcher(model=source).analyze(peft=peft_value)
        assert_close_table(ours, theirs)
        ba = ours[ours.name.str.contains("lora_BA") | ours.longname.str.contains("lora_BA")]
        assert len(ba) == 3 and set(ba.num_evals) <= {8, 10, 12, 16}  # fc1..fc3; the conv adapter is no B·A row
        if peft_value == "with_base" and source is model:
            assert ours.longname.str.contains("lora_W_plus_AB").sum() == 3
            assert (ours.layer_type == "conv2d").any()


def test_base_model_matches_weightwatcher(net):
    torch.manual_seed(7)
    tuned = Net()
    tuned.load_state_dict(net.state_dict())
    with torch.no_grad():
        for p in tuned.parameters():
            p.add_(0.05 * torch.randn_like(p))
    theirs = weightwatcher.WeightWatcher(model=tuned, base_model=net).analyze(mp_fit=True)
    ours = ww.WeightWatcher(model=tuned, base_model=net).analyze(mp_fit=True)
    assert_close_table(ours, theirs)
    ours2 = ww.WeightWatcher(model=tuned).analyze(base_model=net)
    np.testing.assert_allclose(ours2.alpha, theirs.alpha, rtol=1e-6)


def test_merged_fine_tune_against_its_base_matches_weightwatcher():
    """A LoRA fine-tune merged into its base (merge_and_unload) against the base: ΔW = scale B·A."""
    model = peft_model(r=8, lora_alpha=16, target_modules=["fc1", "fc2"])
    torch.manual_seed(0)
    base = Adapted()
    merged = model.merge_and_unload()
    theirs = weightwatcher.WeightWatcher(model=merged, base_model=base).analyze()
    ours = ww.WeightWatcher(model=merged, base_model=base).analyze()
    assert list(ours.name) == list(theirs.name) == ["conv", "fc1", "fc2", "fc3"]
    # unadapted layers: ΔW = 0, degenerate for irtools (NaN, "failed"), numbers of zeros for WeightWatcher
    assert list(ours.warning[ours.name.isin(["conv", "fc3"])]) == ["degenerate", "degenerate"]
    adapted = ours.name.isin(["fc1", "fc2"])
    # entropy, matrix_rank, rank_loss: W_merged - W_base is rank 8 up to float32 round-off; irtools' rank
    # counts eigenvalues above the backend's noise floor, WeightWatcher's above N eps64 max: they differ there
    rank_cols = ["entropy", "matrix_rank", "rank_loss", "sv_min"]
    keep = [c for c in ours.columns if c not in rank_cols]
    assert_close_table(ours[adapted].reset_index(drop=True)[keep], theirs[adapted].reset_index(drop=True)[keep])
    assert list(ours.num_evals[ours.name == "fc1"]) == [40]  # a full ESD of the rank-8 difference, as WW does


@pytest.mark.parametrize("method", ["raw", "euclidean", "cka"])
def test_distances_match_weightwatcher(net, method):
    torch.manual_seed(3)
    other = Net()
    theirs = weightwatcher.WeightWatcher().distances(net, other, method=method)
    ours = ww.WeightWatcher().distances(net, other, method=method)
    np.testing.assert_allclose(ours[:2], theirs[:2], rtol=1e-6)
    assert list(ours[2].columns) == list(theirs[2].columns) and ours[2].index.equals(theirs[2].index)
    for column in theirs[2].columns:
        if not pd.api.types.is_numeric_dtype(theirs[2][column]):
            assert list(map(str, ours[2][column])) == list(map(str, theirs[2][column])), column
        else:
            np.testing.assert_allclose(ours[2][column].to_numpy(float), theirs[2][column].to_numpy(float), rtol=1e-6)
    with pytest.raises(ww.UnsupportedOptionError, match="method must be"):
        ww.WeightWatcher().distances(net, other, method="cosine")


def test_detx_matches_weightwatcher(net):
    theirs = weightwatcher.WeightWatcher(model=net).analyze(detX=True)
    ours = ww.WeightWatcher(model=net).analyze(detX=True)
    assert {"detX_num", "detX_val", "detX_val_unrescaled", "num_ERG_spikes", "ERG_gap"} <= set(ours.columns)
    assert_same_table(ours, theirs, differ=SIGMA_FALLBACK)


def test_detx_plot_files_match_weightwatcher(tmp_path):
    torch.manual_seed(5)
    model = nn.Sequential(nn.Linear(40, 30))
    weightwatcher.WeightWatcher(model=model).analyze(detX=True, plot=True, savefig=str(tmp_path / "theirs"))
    ww.WeightWatcher(model=model).analyze(detX=True, plot=True, savefig=str(tmp_path / "ours"))
    files = sorted(os.listdir(tmp_path / "theirs"))
    assert "ww.layer1.detX.png" in files and sorted(os.listdir(tmp_path / "ours")) == files


def test_detx_by_hand():
    evals = np.array([0.1, 0.2, 0.5, 1.0, 3.0, 5.0])
    e = evals * len(evals) / evals.sum()
    # products from the top: e5, e5 e4, e5 e4 e3 ... until one drops under 1
    k = next(k for k in range(1, len(e)) if np.prod(e[len(e) - k:]) < 1)
    cols = ww.detx_columns(evals, 2)
    assert cols["detX_num"] == k and cols["detX_val"] == evals[len(e) - k] and cols["ERG_gap"] == k - 2


def test_randomized_esds_run_through_the_spectral_pass_on_the_device(net, monkeypatch):
    """randomize=True: the shuffled ESDs are the spectral pass's (its backend = the watcher's device), and
    equal a direct eigen-solve of the same shuffles."""
    from irtools.passes.spectral import SpectralPass

    seen = []
    original = SpectralPass.analyse

    def spy(self, layers, skipped_before=()):
        seen.extend((layer.name, self.backend) for layer in layers)
        return original(self, layers, skipped_before)

    monkeypatch.setattr(SpectralPass, "analyse", spy)
    ww.WeightWatcher(model=net, device="cpu").analyze(randomize=True, layers=[4])
    assert ("esd", "cpu") in seen and all(backend == "cpu" for _, backend in seen)
    mats = [np.random.default_rng(0).normal(size=(30, 12))]
    np.testing.assert_allclose(ww.pooled_esd(mats, 0.5), 0.5 * np.sort(np.linalg.svd(mats[0], compute_uv=False) ** 2),
                               rtol=1e-10)


def _weights(module):
    return {n: p.detach().double().numpy() for n, p in module.named_parameters() if n.endswith("weight")}


@pytest.mark.parametrize("method", ["svd", "detX", "alpha_min", "rmt"])
def test_svd_smoothing_matches_weightwatcher(net, method):
    """Same edit as WeightWatcher (which edits in place: it gets a copy); ours returns a new module of the
    model's type and leaves the model as it was. WeightWatcher truncates with a randomised TruncatedSVD
    (n_iter=7): where the cut falls inside the bulk (svd at percent=0.5, alpha_min) it is off by up to ~1e-3 of the exact
    truncation, which the hand-built check below pins; elsewhere the two agree to float32 round-off."""
    import copy

    before = _weights(net)
    ours = ww.WeightWatcher(model=net).SVDSmoothing(method=method, percent=0.5)
    theirs = copy.deepcopy(net)
    weightwatcher.WeightWatcher(model=theirs).SVDSmoothing(method=method, percent=0.5)
    assert type(ours) is type(net) and ours is not net
    mine, ref = _weights(ours), _weights(theirs)
    changed = 0
    for name, w in before.items():
        np.testing.assert_array_equal(_weights(net)[name], w)  # the input is not modified
        scale = np.linalg.norm(ref[name])
        assert np.linalg.norm(mine[name] - ref[name]) <= (2e-3 if method in ("svd", "alpha_min") else 1e-5) * scale, \
            (method, name)
        changed += not np.allclose(mine[name], w)
    assert changed >= 1
    if method == "svd":  # rank-k truncation by hand: k = int(0.5 * M)
        w = before["block.0.weight"]
        u, s, vh = np.linalg.svd(w, full_matrices=False)
        k = int(0.5 * min(w.shape))
        np.testing.assert_allclose(mine["block.0.weight"], (u[:, :k] * s[:k]) @ vh[:k], rtol=1e-5, atol=1e-6)


def test_svd_sharpness_matches_weightwatcher_with_the_same_shuffles(net):
    import copy

    np.random.seed(11)
    ours = ww.WeightWatcher(model=net).SVDSharpness()
    theirs = copy.deepcopy(net)
    np.random.seed(11)
    weightwatcher.WeightWatcher(model=theirs).SVDSharpness(model=theirs)
    mine, ref = _weights(ours), _weights(theirs)
    assert any(not np.allclose(mine[n], w) for n, w in _weights(net).items())
    for name in ref:
        assert np.linalg.norm(mine[name] - ref[name]) <= 1e-5 * np.linalg.norm(ref[name]), name


def test_svd_edits_of_a_state_dict_and_refusals(net):
    state = {k: v.clone() for k, v in net.state_dict().items()}
    out = ww.WeightWatcher(model=state).SVDSmoothing(method="svd", percent=0.25)
    assert isinstance(out, dict) and set(out) == set(state) and isinstance(out["head.weight"], torch.Tensor)
    w = state["head.weight"].double().numpy()
    u, s, vh = np.linalg.svd(w, full_matrices=False)
    k = int(0.25 * min(w.shape))
    np.testing.assert_allclose(out["head.weight"].double().numpy(), (u[:, :k] * s[:k]) @ vh[:k], rtol=1e-5,
                               atol=1e-6)
    with pytest.raises(ww.UnsupportedOptionError, match="method must be"):
        ww.WeightWatcher(model=net).SVDSmoothing(method="lambda_min")
    with pytest.raises(ww.UnsupportedOptionError, match="pool=True"):
        ww.WeightWatcher(model=net).SVDSharpness(pool=False)
