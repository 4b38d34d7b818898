"""`irtools.compat.weightwatcher` against WeightWatcher 0.7.7: describe(peft=, base_model=), and every option
WeightWatcher's analyze() and describe() accept, walked from WeightWatcher's own signatures: each one either
matches WeightWatcher (to 1e-6) or is refused in one line that names it (never with a model's repr)."""

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
from tests.test_compat_weightwatcher import Net, assert_close_table, assert_same_table, peft_model

logging.getLogger("weightwatcher").setLevel(logging.ERROR)


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return Net()


@pytest.fixture(scope="module")
def tuned(net):
    """`net` with every weight moved a little (a fine-tune of it)."""
    torch.manual_seed(7)
    model = Net()
    model.load_state_dict(net.state_dict())
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


# -- describe(peft=..., base_model=...) ---------------------------------------------------------------------

@pytest.mark.parametrize("config", [{"r": 8, "lora_alpha": 16}, {"r": 8, "rank_pattern": {"fc2": 16, "fc3": 10}}])
@pytest.mark.parametrize("peft_value", [True, "with_base", "peft_only", False])
def test_describe_peft_matches_weightwatcher(tmp_path, config, peft_value):
    """The rows analyze(peft=...) has, as WeightWatcher's describe lists them: a B·A row's num_evals is M x rf
    of the product (not r), a peft column on every row; the model and its saved adapter folder."""
    model = peft_model(**config)
    folder = tmp_path / "adapter"
    model.save_pretrained(folder)
    for source in (model, str(folder)):
        if peft_value == "with_base" and source != model:  # the folder: the layer before lora_B is lora_A
            with pytest.raises(ValueError, match="broadcast"):
                weightwatcher.WeightWatcher(model=source).describe(peft=peft_value)
            with pytest.raises(IrtoolsError, match="is not the base of B·A"):
                ww.WeightWatcher(model=source).describe(peft=peft_value)
            continue
        theirs = weightwatcher.WeightWatcher(model=source).describe(peft=peft_value)
        ours = ww.WeightWatcher(model=source).describe(peft=peft_value)
        pd.testing.assert_frame_equal(ours, theirs)
        if peft_value:
            assert ours.longname.str.contains("lora_BA").sum() == 3 and ours.peft.dtype == bool


def test_describe_peft_lists_what_analyze_analyses():
    """describe(peft=) and analyze(peft=) have the same rows (ids, names, shapes)."""
    model = peft_model(r=8, lora_alpha=16)
    watcher = ww.WeightWatcher(model=model)
    for value in (True, "with_base"):
        listed, analysed = watcher.describe(peft=value), watcher.analyze(peft=value)
        key = ["layer_id", "name", "longname", "layer_type", "N", "M", "rf", "peft"]
        pd.testing.assert_frame_equal(listed[key], analysed[key])


def test_describe_base_model_matches_weightwatcher(net, tuned):
    theirs = weightwatcher.WeightWatcher(model=tuned, base_model=net).describe()
    pd.testing.assert_frame_equal(ww.WeightWatcher(model=tuned, base_model=net).describe(), theirs)
    pd.testing.assert_frame_equal(ww.WeightWatcher().describe(model=tuned, base_model=net), theirs)
    with pytest.raises(ww.UnsupportedOptionError, match=r"describe\(\): base_model= is supported only with pool=True"):
        ww.WeightWatcher(model=tuned, base_model=net).describe(pool=False)
    with pytest.raises(IrtoolsError, match="got int"):
        ww.WeightWatcher(model=tuned).describe(base_model=42)


def test_base_model_wins_over_peft_as_in_weightwatcher():
    """base_model= and peft= together: WeightWatcher's delta iterator (no B·A rows, no peft column)."""
    one, two = peft_model(r=8, lora_alpha=16), peft_model(r=8, lora_alpha=16)
    torch.manual_seed(3)
    with torch.no_grad():
        for p in two.parameters():
            p.add_(0.05 * torch.randn_like(p))
    theirs = weightwatcher.WeightWatcher(model=one, base_model=two).describe(peft=True)
    pd.testing.assert_frame_equal(ww.WeightWatcher(model=one, base_model=two).describe(peft=True), theirs)
    assert "peft" not in theirs.columns
    theirs = weightwatcher.WeightWatcher(model=one, base_model=two).analyze(peft=True, layers=[14, 19, 21])
    ours = ww.WeightWatcher(model=one, base_model=two).analyze(peft=True, layers=[14, 19, 21])
    assert_close_table(ours, theirs)
    with pytest.raises(ww.UnsupportedOptionError, match=r"analyze\(\): peft=True is supported only with pool=True"):
        ww.WeightWatcher(model=one).analyze(peft=True, ww2x=True)


# -- every option of WeightWatcher's analyze() and describe(), walked from its own signatures ------------------

class Walk(nn.Module):
    """A heavy-tailed dense layer, a 3x3 conv (slices of 12 eigenvalues) and a plain dense layer: ids 1, 2, 3."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(64, 40)
        self.conv = nn.Conv2d(12, 16, 3)
        self.fc2 = nn.Linear(40, 30)
        with torch.no_grad():
            g = torch.Generator().manual_seed(2)
            self.fc1.weight.copy_(torch.randn(40, 64, generator=g) ** 3 / 8)


@pytest.fixture(scope="module")
def walk():
    """The model and another of its shape (its base: every weight differs)."""
    torch.manual_seed(0)
    model, other = Walk(), Walk()
    with torch.no_grad():
        other.fc1.weight.add_(0.05 * torch.randn_like(other.fc1.weight))
    return model, other


TMP, OTHER = "<tmp>", "<other model>"
#: WeightWatcher keyword -> cases (kind, options of the call). "same": the table (and any figure files) as
#: WeightWatcher's, to 1e-6; "refused": an UnsupportedOptionError naming the option; "random": randomize's
#: shuffles differ (WeightWatcher's are unseeded), every other column the same; "vectors": the same, the
#: eigenvector columns as `check_vector_columns` says; "documented": irtools deliberately differs where
#: WeightWatcher 0.7.7 fails, checked in the test named.
ANALYZE_CASES = {
    "layers": [("same", {"layers": [1, 3]}), ("same", {"layers": ["conv2d"]})],
    "min_evals": [("same", {"min_evals": 30}), ("same", {"min_evals": 0}), ("refused", {"min_evals": "8"})],
    "max_evals": [("same", {"max_evals": 35}), ("same", {"max_evals": 0}), ("refused", {"max_evals": -5}),
                  ("refused", {"max_evals": 10, "min_evals": 20})],
    "min_size": [("same", {"min_size": 10})],
    "max_size": [("same", {"max_size": 10})],
    "max_N": [("same", {"max_N": 50, "max_evals": 40}), ("refused", {"max_N": None})],
    "glorot_fix": [("same", {"glorot_fix": True})],
    "plot": [("same", {"plot": True, "savefig": TMP, "layers": [3]}), ("refused", {"plot": "yes"})],
    "randomize": [("random", {"randomize": True})],
    "savefig": [("same", {"savefig": TMP}), ("refused", {"savefig": 3.5})],
    "mp_fit": [("same", {"mp_fit": True})],
    "conv2d_norm": [("same", {"conv2d_norm": False})],
    "ww2x": [("same", {"ww2x": True})],
    "pool": [("same", {"pool": False})],
    "conv2d_fft": [("refused", {"conv2d_fft": True})],
    "fft": [("refused", {"fft": True})],
    "deltas": [("same", {"deltas": True}), ("refused", {"deltas": True, "plot": True, "savefig": TMP})],
    "intra": [("refused", {"intra": True}),  # sparsify=True, its default: an unseeded random mask
              ("same", {"intra": True, "sparsify": False}),  # no consecutive pair shares a dimension here
              ("refused", {"intra": True, "sparsify": False, "pool": False})],
    "vectors": [("vectors", {"vectors": True}), ("vectors", {"vectors": True, "pool": False}),
                ("vectors", {"vectors": True, "base_model": OTHER, "conv2d_norm": False}),
                ("refused", {"vectors": True, "plot": True, "savefig": TMP})],
    "channels": [("refused", {"channels": "first"})],
    "stacked": [("same", {"stacked": True}), ("same", {"stacked": True, "layers": [3, 2], "mp_fit": True}),
                ("refused", {"stacked": True, "pool": False}), ("refused", {"stacked": True, "base_model": OTHER})],
    "fix_fingers": [("same", {"fix_fingers": "clip_xmax"}),
                    ("documented", {"fix_fingers": "xmin_peak"},
                     "test_fingers.py::test_weightwatcher_itself_fails_every_xmin_peak_fit"),
                    ("refused", {"fix_fingers": "xmin_fit"})],
    "xmin_max": [("same", {"xmin_max": 2.0})],
    "max_fingers": [("same", {"fix_fingers": "clip_xmax", "max_fingers": 3})],
    "finger_thresh": [("same", {"fix_fingers": "clip_xmax", "finger_thresh": 0.5})],
    "fit": [("same", {"fit": "power_law"}), ("refused", {"fit": "TPL"})],
    "sparsify": [("same", {"sparsify": False})],
    "detX": [("same", {"detX": True})],
    "ERG": [("same", {"ERG": True})],
    "svd_method": [("same", {"svd_method": "accurate"}), ("same", {"svd_method": "fast"})],
    "tolerance": [("same", {"tolerance": 1e-2}), ("refused", {"tolerance": "small"})],
    "start_ids": [("same", {"start_ids": 1})],
    "pl_package": [("refused", {"pl_package": "powerlaw"})],
    "xmax": [("same", {"xmax": -1}), ("refused", {"xmax": "force"})],
    "base_model": [("same", {"base_model": OTHER})],
    "peft": [("same", {"peft": "with_base"}), ("refused", {"peft": 2.5})],
    "inverse": [("same", {"inverse": True, "layers": [1, 3]}), ("same", {"inverse": True, "pool": False}),
                ("same", {"inverse": True, "layers": [1, 3], "mp_fit": True, "detX": True}),
                ("same", {"inverse": True, "layers": [1, 3], "base_model": OTHER}),
                ("refused", {"inverse": True}),  # the pooled conv
                ("refused", {"inverse": True, "randomize": True, "layers": [1]})],
}
DESCRIBE_CASES = {
    "layers": [("same", {"layers": [1, 3]})],
    "min_evals": [("same", {"min_evals": 30})],
    "max_evals": [("same", {"max_evals": 35})],
    "min_size": [("same", {"min_size": 10})],
    "max_size": [("same", {"max_size": 10})],
    "max_N": [("same", {"max_N": 50, "max_evals": 40})],
    "glorot_fix": [("same", {"glorot_fix": True})],
    "savefig": [("same", {"savefig": TMP})],
    "ww2x": [("same", {"ww2x": True})],
    "pool": [("same", {"pool": False})],
    "conv2d_fft": [("refused", {"conv2d_fft": True})],
    "fft": [("refused", {"fft": True})],
    "conv2d_norm": [("same", {"conv2d_norm": False})],
    "intra": [("refused", {"intra": True})],
    "channels": [("refused", {"channels": "last"})],
    "stacked": [("same", {"stacked": True}), ("same", {"stacked": True, "layers": [3, 2], "min_evals": 20}),
                ("same", {"stacked": True, "base_model": OTHER}), ("refused", {"stacked": True, "pool": False})],
    "start_ids": [("same", {"start_ids": 1})],
    "base_model": [("same", {"base_model": OTHER}), ("refused", {"base_model": OTHER, "pool": False})],
    "peft": [("same", {"peft": "with_base"}), ("refused", {"peft": ["with_base"]})],
}
RANDOM_COLUMNS = {"max_rand_eval", "rand_distance", "ww_softrank", "ww_maxdist", "num_traps", "rand_num_spikes",
                  "rand_sigma_mp", "rand_mp_softrank", "rand_W_scale", "rand_bulk_max", "rand_bulk_min"}


VECTOR_COLUMNS = {f"{part}_{stat}_{name}" for part in ("bulk", "tail") for stat in ("mean", "var")
                  for name in ("vec_entropy", "loc_ratio", "part_ratio")}


def check_vector_columns(ours: pd.DataFrame, theirs: pd.DataFrame, model, base=None) -> None:
    """vectors=True: per row, irtools' 12 columns split the eigenvectors at the fit's tail (its num_pl_spikes
    largest eigenvalues). WeightWatcher's are either the same, or those of a tail one shorter: it compares
    eigenvalues it solves again (with `eig`) with the fit's xmin, so the eigenvector of xmin itself falls on
    either side by rounding. Each row of WeightWatcher's is one of the two; most here are the first."""
    from irtools.compat._ww_vectors import vector_columns

    columns, same = sorted(VECTOR_COLUMNS), 0
    for (_, mine), (_, ref) in zip(ours.iterrows(), theirs.iterrows()):
        module = dict(model.named_modules())[ref.longname]
        w = module.weight.detach().double().numpy()
        if base is not None:
            w = w - dict(base.named_modules())[ref.longname].weight.detach().double().numpy()
        mats = [w] if w.ndim == 2 else [w[:, :, i, j] for i in range(w.shape[2]) for j in range(w.shape[3])]
        if "slice_id" in ref:
            mats = [mats[int(ref.slice_id)]]
        expected = np.array([ref[c] for c in columns], dtype=float)
        got = np.array([mine[c] for c in columns], dtype=float)
        if np.allclose(got, expected, rtol=1e-6, atol=1e-9):
            same += 1
            continue
        shorter = vector_columns(mats, int(ref.num_pl_spikes) - 1)
        np.testing.assert_allclose([shorter[c] for c in columns], expected, rtol=1e-6, atol=1e-9, err_msg=ref.name)
    assert same >= len(theirs) / 3


def _keywords(method) -> set[str]:
    import inspect

    return {name for name, p in inspect.signature(method).parameters.items()
            if name not in ("self", "model") and p.kind is not p.VAR_KEYWORD}


def test_every_weightwatcher_option_is_walked():
    """WeightWatcher's own signatures: each keyword has cases here and is one irtools knows (so that an option a
    new WeightWatcher adds fails this test instead of being ignored or refused as unknown)."""
    analyze, describe = _keywords(weightwatcher.WeightWatcher.analyze), _keywords(weightwatcher.WeightWatcher.describe)
    assert set(ANALYZE_CASES) == analyze == set(ww.WW_ANALYZE_KEYWORDS)
    assert set(DESCRIBE_CASES) == describe == set(ww.WW_DESCRIBE_KEYWORDS)
    # irtools' own keywords: the named ones (less its `seed`) and those it takes through **options
    ours = _keywords(ww.WeightWatcher.analyze) - {"seed"}
    assert ours | set(ww.SUPPORTED) | set(ww.ANALYZE_OWN) | set(ww.UNSUPPORTED) == analyze
    ours = _keywords(ww.WeightWatcher.describe)
    assert ours | set(ww.DESCRIBE_OPTIONS) | set(ww.DESCRIBE_UNSUPPORTED) | set(ww.DESCRIBE_OWN) == describe


def _resolve(options: dict, tmp, side: str, other) -> dict:
    out = {}
    for key, value in options.items():
        out[key] = str(tmp / side) if value == TMP else other if value is OTHER else value
    return out


def _check_refused(call, options: dict) -> None:
    with pytest.raises(ww.UnsupportedOptionError) as caught:
        call(**options)
    message = str(caught.value)
    assert next(iter(options)) in message, message  # the option refused comes first, its companions after
    assert "\n" not in message and len(message) < 300 and "Linear(" not in message and "Conv2d(" not in message


@pytest.fixture(scope="module")
def defaults(walk):
    """Both tools' tables of the plain calls (the same: checked in test_plain_calls_match)."""
    model = walk[0]
    return {(side, method): getattr(tool.WeightWatcher(), method)(model=model)
            for side, tool in (("ours", ww), ("theirs", weightwatcher)) for method in ("analyze", "describe")}


def test_plain_calls_match(defaults):
    theirs = defaults["theirs", "analyze"]
    assert_same_table(defaults["ours", "analyze"], theirs, differ=_sigma_cells(theirs))
    pd.testing.assert_frame_equal(defaults["ours", "describe"], defaults["theirs", "describe"])


@pytest.mark.parametrize(("method", "keyword"), [("analyze", k) for k in ANALYZE_CASES] +
                         [("describe", k) for k in DESCRIBE_CASES])
def test_each_weightwatcher_option_matches_or_is_refused(walk, tmp_path, method, keyword):
    model, other = walk
    cases = (ANALYZE_CASES if method == "analyze" else DESCRIBE_CASES)[keyword]
    for k, (kind, options, *why) in enumerate(cases):
        tmp = tmp_path / str(k)
        ours_call = getattr(ww.WeightWatcher(), method)
        if kind == "refused":
            _check_refused(lambda **o: ours_call(model=model, **o), _resolve(options, tmp, "ours", other))
            continue
        ours = ours_call(model=model, **_resolve(options, tmp, "ours", other))
        if kind == "documented":
            assert why and len(ours) > 0
            continue
        theirs = getattr(weightwatcher.WeightWatcher(), method)(model=model, **_resolve(options, tmp, "theirs", other))
        context = f"{method}({options})"
        try:
            if method == "describe":
                pd.testing.assert_frame_equal(ours, theirs)
            elif kind in ("random", "vectors"):
                assert list(ours.columns) == list(theirs.columns)
                skip = RANDOM_COLUMNS if kind == "random" else VECTOR_COLUMNS
                keep = [c for c in theirs.columns if c not in skip]
                assert_same_table(ours[keep], theirs[keep], differ=_sigma_cells(theirs))
                if kind == "vectors":
                    check_vector_columns(ours, theirs, model, other if "base_model" in options else None)
            else:
                assert_same_table(ours, theirs, differ=_sigma_cells(theirs))
        except AssertionError as failed:
            raise AssertionError(f"{context}: {failed}") from failed
        files = [sorted(os.listdir(tmp / side)) if (tmp / side).exists() else None for side in ("ours", "theirs")]
        assert files[0] == files[1], context
        if options.get("plot"):
            assert files[0], context


def _sigma_cells(theirs: pd.DataFrame) -> list:
    """WeightWatcher's small-sample fallback sigma (see tests/test_compat_weightwatcher.py's SIGMA_FALLBACK)."""
    return [(name, "sigma") for name in theirs.name[theirs.sigma < 0]] if "sigma" in theirs else []


@pytest.mark.parametrize("method", ["analyze", "describe"])
def test_weightwatcher_defaults_are_accepted(walk, defaults, method):
    """Each keyword at WeightWatcher's own default value: accepted, and the table of a call without it."""
    import inspect

    model, plain = walk[0], defaults["ours", method]
    for name, p in inspect.signature(getattr(weightwatcher.WeightWatcher, method)).parameters.items():
        if name not in ("self", "model"):
            pd.testing.assert_frame_equal(getattr(ww.WeightWatcher(), method)(model=model, **{name: p.default}), plain,
                                          obj=f"{method}({name}={p.default!r})")


def test_the_other_methods_take_weightwatchers_keywords(walk):
    """distances, SVDSmoothing, SVDSharpness, get_ESD, get_summary, get_details and the constructor take every
    keyword WeightWatcher's take, in its order (irtools' additions after them); what they do not implement is
    refused naming it."""
    import inspect

    for name in ("__init__", "distances", "SVDSmoothing", "SVDSharpness", "get_ESD", "get_summary", "get_details"):
        theirs = list(inspect.signature(getattr(weightwatcher.WeightWatcher, name)).parameters)
        ours = list(inspect.signature(getattr(ww.WeightWatcher, name)).parameters)
        assert ours[:len(theirs)] == theirs, name
    model, other = walk
    watcher = ww.WeightWatcher(model=model)
    for call, options in ((watcher.SVDSmoothing, {"fit": "TPL"}), (watcher.SVDSmoothing, {"percent": "most"}),
                          (watcher.SVDSmoothing, {"plot": True}), (watcher.SVDSmoothing, {"svd_method": "truncated"}),
                          (watcher.SVDSharpness, {"plot": True}), (watcher.SVDSharpness, {"pool": False}),
                          (watcher.get_ESD, {"params": {"pool": True}, "layer": 1}),
                          (lambda **o: watcher.distances(model, other, **o), {"channels": "first"})):
        _check_refused(call, options)


def test_base_model_given_to_analyze_is_used(net, tuned):
    """irtools' one deliberate difference here: WeightWatcher(model=m).analyze(base_model=b) analyses m - b
    (as WeightWatcher does when model= is given to analyze too); WeightWatcher 0.7.7 drops that base_model
    (its set_model_ keeps it only when analyze() also gets model=) and analyses m alone."""
    delta = weightwatcher.WeightWatcher().analyze(model=tuned, base_model=net)
    alone = weightwatcher.WeightWatcher(model=tuned).analyze()
    dropped = weightwatcher.WeightWatcher(model=tuned).analyze(base_model=net)
    pd.testing.assert_series_equal(dropped.alpha, alone.alpha)  # WeightWatcher's own behaviour, checked
    assert not delta.alpha.equals(alone.alpha)
    assert_close_table(ww.WeightWatcher(model=tuned).analyze(base_model=net), delta)
    assert_close_table(ww.WeightWatcher().analyze(model=tuned, base_model=net), delta)


def test_inverse_by_hand(walk):
    """inverse=True: the ESD of 1 / sv² of the matrix (its largest eigenvalue 1 / sv_min²), while sv_max and
    sv_min are the matrix's own."""
    model = walk[0]
    sv = np.linalg.svd(model.fc2.weight.detach().double().numpy(), compute_uv=False)
    row = ww.WeightWatcher(model=model).analyze(inverse=True, layers=[3]).iloc[0]
    np.testing.assert_allclose([row.lambda_max, row.norm, row.sv_max, row.sv_min],
                               [1 / sv.min() ** 2, np.sum(1 / sv ** 2), sv.max(), sv.min()], rtol=1e-9)
    assert row.num_evals == 30 and row.rank_loss == 0


class Chain(nn.Module):
    """Consecutive layers that share a dimension: dense -> dense -> conv -> dense."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(64, 40)
        self.fc2 = nn.Linear(40, 30)
        self.conv = nn.Conv2d(30, 24, 3)
        self.fc3 = nn.Linear(24, 20)


@pytest.mark.parametrize("options", [{}, {"mp_fit": True, "conv2d_norm": False}, {"layers": [-2]}])
def test_intra_matches_weightwatcher(net, options):
    """intra=True, sparsify=False: a row per consecutive pair (W0 W1 / norms, its singular values as the ESD;
    a conv by its first slice), named "<id0> X <id1> ", with Xflag; the Chain model and the test Net."""
    torch.manual_seed(0)
    rows = 0
    for model in (Chain(), net):
        theirs = weightwatcher.WeightWatcher().analyze(model=model, intra=True, sparsify=False, **options)
        ours = ww.WeightWatcher().analyze(model=model, intra=True, sparsify=False, **options)
        assert_same_table(ours, theirs, differ=_sigma_cells(theirs))
        rows += len(theirs)
        assert theirs.empty or theirs.Xflag.all()
    assert rows >= 2
    x = ours.iloc[0]  # by hand: net's first pair, 4 X 6 (block.0 40x64, block.2 30x40)
    w0, w1 = net.block[0].weight.detach().double().numpy(), net.block[2].weight.detach().double().numpy()
    product = w0.T @ w1.T / (np.linalg.norm(w0) * np.linalg.norm(w1))
    if "layers" not in options:
        np.testing.assert_allclose(x.lambda_max, np.linalg.svd(product, compute_uv=False).max(), rtol=1e-6)
