"""WeightWatcher's fit options (fix_fingers, integer xmax) and layer options (pool=False, conv2d_norm)
against WeightWatcher 0.7.7 itself: its `fit_powerlaw` on random spectra (small ones included), and its
`analyze` tables on a small model; xmin_peak against a plain transcription of the `powerlaw` package's
xmin-range search (what WeightWatcher hands the range to), since WeightWatcher 0.7.7 fails that fit itself.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import warnings

import numpy as np
import pandas as pd
import pytest

torch = pytest.importorskip("torch")
weightwatcher = pytest.importorskip("weightwatcher")
nn = torch.nn

import irtools
import irtools.compat.weightwatcher as ww
from irtools.passes.spectral.powerlaw import FitOptions, fit_layer, peak_range
from tests.test_compat_weightwatcher import assert_same_table

logging.getLogger("weightwatcher").setLevel(logging.CRITICAL)


def spectra(count: int, seed: int):
    """8..160 values: Pareto tails, half of them over a uniform bulk, and every third a Gaussian matrix's
    (Marchenko-Pastur) spectrum with 1-4 fingers just above its edge; some with values below the 1e-5 cut."""
    rng = np.random.default_rng(seed)
    for k in range(count):
        n, alpha = int(rng.integers(8, 160)), rng.uniform(1.5, 6.0)
        if k % 3 == 1:
            evals = np.linalg.svd(rng.standard_normal((n + 20, n)), compute_uv=False) ** 2 / n
            evals = np.concatenate([evals, evals.max() * rng.uniform(1.0, 1.3, size=int(rng.integers(1, 5)))])
        else:
            evals = (1 - rng.random(n)) ** (-1 / (alpha - 1))
        if k % 2:
            evals = np.concatenate([evals, rng.uniform(0.05, 0.9, n)])
        if k % 5 == 0:
            evals = np.concatenate([evals, [1e-7, 0.0]])
        yield np.sort(evals)


def ww_fit(evals, **options):
    """WeightWatcher 0.7.7's own `fit_powerlaw` (what `analyze` calls per layer): its columns by name."""
    kwargs = {"fix_fingers": False, "finger_thresh": 1.0, "max_fingers": 10, "xmin_max": None, "pl_package": "ww",
              "xmax": None}
    kwargs.update(options)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()), \
            warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = weightwatcher.WeightWatcher().fit_powerlaw(evals.copy(), plot=False, **kwargs)
    names = ("alpha", "Lambda", "xmin", "xmax", "D", "sigma", "num_pl_spikes", "num_fingers", "raw_alpha", "status")
    return dict(zip(names, out))


def assert_same_fit(ours, ref, small_sigma: bool) -> None:
    assert ours.status == "success" and ref["status"] == "success"
    assert ours.xmin == ref["xmin"] and ours.xmax == ref["xmax"]
    assert ours.num_pl_spikes == ref["num_pl_spikes"]
    np.testing.assert_allclose([ours.alpha, ours.D], [ref["alpha"], ref["D"]], rtol=1e-12)
    if not small_sigma:  # below 8 eigenvalues WeightWatcher's sigma is -1/sqrt(n) (see powerlaw.py)
        np.testing.assert_allclose(ours.sigma, ref["sigma"], rtol=1e-12)


@pytest.mark.parametrize("options", [{}, {"finger_thresh": 0.3}, {"max_fingers": 60}, {"max_fingers": 4}])
def test_clip_xmax_matches_weightwatcher(options):
    """Which refit wins, num_fingers, raw_alpha, the winner's xmax, the spikes counted over the whole ESD,
    max_fingers reset to 10 below half the eigenvalues, and the fits WeightWatcher fails (too few left)."""
    clipped = failed = 0
    for evals in spectra(40, seed=len(options)):
        ref = ww_fit(evals, fix_fingers="clip_xmax", **options)
        ours = fit_layer(evals, FitOptions(fix_fingers="clip_xmax", **options))
        if ref["status"] == "failed":
            assert ours.status.startswith("failed") and math.isnan(ours.alpha)
            failed += 1
            continue
        assert_same_fit(ours, ref, small_sigma=False)
        assert (ours.num_fingers, ours.raw_alpha) == (ref["num_fingers"], pytest.approx(ref["raw_alpha"], rel=1e-12))
        clipped += ours.num_fingers > 0
    assert clipped >= 3  # the comparison covers clipped fits
    if options.get("max_fingers") == 60:
        assert failed >= 3  # kept (>= half the eigenvalues): WeightWatcher runs out of eigenvalues


@pytest.mark.parametrize("xmax", [-1, 3, 150])
def test_integer_xmax_matches_weightwatcher(xmax):
    """xmax = -k leaves the k largest eigenvalues out; past half of them WeightWatcher cuts the fit at the
    eigenvalue nearest to the number k instead."""
    for evals in spectra(30, seed=abs(xmax)):
        ref = ww_fit(evals, xmax=xmax)
        ours = fit_layer(evals, FitOptions(clip_top=abs(xmax)))
        kept = evals[:-abs(xmax)] if abs(xmax) <= evals.size / 2 else evals
        assert_same_fit(ours, ref, small_sigma=np.count_nonzero(kept[kept <= ref["xmax"]] > 1e-5) < 8)


def powerlaw_range_fit(evals, low, high):
    """The `powerlaw` package's (1.5) Fit(data, xmin=(low, high)) written out: xmin among the distinct
    values in [low, high] but the largest of them, alpha = 1 + n / sum ln(x / xmin), smallest KS D."""
    x = np.sort(evals[evals > 1e-5])
    best = None
    for xmin in np.unique(x[(x >= low) & (x <= high)])[:-1]:
        tail = x[x >= xmin]
        alpha = 1 + tail.size / np.sum(np.log(tail / xmin))
        d = np.max(np.abs(1 - (tail / xmin) ** (1 - alpha) - np.arange(tail.size) / tail.size))
        if best is None or d < best[2]:
            best = (xmin, alpha, d, (alpha - 1) / np.sqrt(tail.size))
    return best


def test_xmin_peak_is_the_powerlaw_package_range_fit():
    """xmin_peak: the range from the fullest bin of the log10 ESD (WeightWatcher's bounds, one of them in
    log10), searched as the powerlaw package does; spectra under 20 eigenvalues get no bias correction."""
    for k, evals in enumerate(spectra(40, seed=7)):
        x = evals[evals > 1e-5]
        counts, edges = np.histogram(np.log10(x), bins=100)
        peak = 10 ** edges[np.argmax(counts)]
        xmin_max = None if k % 3 else 2.0 * peak
        low, high = peak_range(x, xmin_max)
        assert (low, high) == (min(np.log10(0.95 * peak), xmin_max or 1.5 * peak),
                               max(np.log10(0.95 * peak), xmin_max or 1.5 * peak))
        ours = fit_layer(evals, FitOptions(fix_fingers="xmin_peak", xmin_max=xmin_max))
        ref = powerlaw_range_fit(evals, low, high)
        if ref is None:
            assert ours.status.startswith("failed: fewer than 2 distinct")
            continue
        assert ours.xmin == ref[0] and ours.num_pl_spikes == np.count_nonzero(evals >= ref[0])
        np.testing.assert_allclose([ours.alpha, ours.D, ours.sigma], ref[1:], rtol=1e-9)


def test_weightwatcher_itself_fails_every_xmin_peak_fit():
    """Why xmin_peak is checked against the powerlaw package's search: WeightWatcher 0.7.7 hands its own fit
    an (low, high) tuple it cannot take, and powerlaw 2.0 refuses the `distribution` keyword it passes."""
    evals = next(spectra(1, seed=3))
    assert ww_fit(evals, fix_fingers="xmin_peak")["status"] == "failed"
    powerlaw = pytest.importorskip("powerlaw")
    if int(getattr(powerlaw, "__version__", "2").split(".")[0]) >= 2:
        assert ww_fit(evals, fix_fingers="xmin_peak", pl_package="powerlaw")["status"] == "failed"
    else:  # an older powerlaw: WeightWatcher's own numbers
        ref = ww_fit(evals, fix_fingers="xmin_peak", pl_package="powerlaw")
        ours = fit_layer(evals, FitOptions(fix_fingers="xmin_peak"))
        assert ours.xmin == ref["xmin"] and ours.alpha == pytest.approx(ref["alpha"], rel=1e-9)


class Net(nn.Module):
    """Dense layers (one of 12 eigenvalues; fc2 has fingers), 3x3, 2x2 and 1x2 convs (slices of 12, 4 and 9
    eigenvalues)."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(64, 40)
        self.conv = nn.Conv2d(12, 16, 3)
        self.small = nn.Conv2d(4, 9, 2)
        self.wide = nn.Conv2d(9, 20, (1, 2))
        self.fc2 = nn.Linear(40, 30)
        self.fc3 = nn.Linear(30, 12)
        with torch.no_grad():
            g = torch.Generator().manual_seed(2)
            self.fc1.weight.copy_(torch.randn(40, 64, generator=g) ** 3 / 8)  # a heavier tail than Gaussian


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return Net()


@pytest.mark.parametrize("options", [
    {"fix_fingers": "clip_xmax"}, {"fix_fingers": "clip_xmax", "finger_thresh": 0.5, "max_fingers": 30},
    {"pool": False}, {"ww2x": True, "min_evals": 2}, {"conv2d_norm": False},
    {"pool": False, "conv2d_norm": False}, {"xmax": -1},
    {"glorot_fix": True, "min_size": 3, "max_size": 10},
])
def test_analyze_with_options_matches_weightwatcher(net, options):
    """Same rows (slice rows with slice_id, filtered by the slice's own size), columns (num_fingers,
    raw_alpha), dtypes and values to 1e-6 as WeightWatcher's analyze with the same options."""
    theirs = weightwatcher.WeightWatcher(model=net).analyze(**options)
    ours = ww.WeightWatcher(model=net).analyze(**options)
    assert_same_table(ours, theirs, differ=[(name, "sigma") for name in theirs.name[theirs.sigma < 0]])
    assert (ours.status == "success").all()
    if options.get("fix_fingers"):
        assert ours.num_fingers.max() > 0
    if "pool" in options or "ww2x" in options:
        assert len(ours) > 6 and set(ours.slice_id) == set(range(9))  # 3x3 kernels


def test_describe_with_slices_matches_weightwatcher(net):
    for options in ({"pool": False}, {"ww2x": True, "min_evals": 2}, {"conv2d_norm": False}):
        pd.testing.assert_frame_equal(ww.WeightWatcher(model=net).describe(**options),
                                      weightwatcher.WeightWatcher(model=net).describe(**options))


def test_options_are_checked_like_weightwatcher(net):
    watcher = ww.WeightWatcher(model=net)
    for options, match in (({"fix_fingers": "clip_xmax", "xmax": -2}, "cannot be combined"),
                           ({"xmax": 0}, "xmax"), ({"xmax": "force"}, "force"), ({"max_fingers": 0}, "max_fingers"),
                           ({"fix_fingers": True}, "fix_fingers"), ({"pool": "no"}, "pool"),
                           ({"pl_package": "powerlaw"}, "pl_package")):
        with pytest.raises(ww.UnsupportedOptionError, match=match):
            watcher.analyze(**options)
    with pytest.raises(TypeError, match="fix_fingers"):
        watcher.describe(fix_fingers="clip_xmax")  # WeightWatcher's describe has no fit options either


def test_core_pass_and_cli_fix_fingers(net, tmp_path):
    """`irtools analyze --fix-fingers` and `irtools.analyze(fix_fingers=...)` give the compat API's (that is
    WeightWatcher's) clip_xmax numbers, and xmin_peak's, on a weights file."""
    from click.testing import CliRunner
    from safetensors.torch import save_file

    from irtools.cli import main

    path = str(tmp_path / "net.safetensors")
    save_file({"fc1.weight": net.fc1.weight.detach().contiguous(), "fc2.weight": net.fc2.weight.detach().contiguous()},
              path)
    compat = ww.WeightWatcher(model=net).analyze(layers=[1, 5], fix_fingers="clip_xmax")
    result = CliRunner().invoke(main, ["analyze", path, "--metrics", "spectral", "--format", "csv",
                                       "--fix-fingers", "clip_xmax"])
    assert result.exit_code == 0, result.output
    rows = pd.read_csv(io.StringIO(result.stdout))
    for column in ("alpha", "xmin", "xmax", "D", "num_pl_spikes", "num_fingers", "raw_alpha", "alpha_weighted"):
        np.testing.assert_allclose(rows[column], compat[column].to_numpy(float), rtol=1e-9, err_msg=column)
    assert list(compat.num_fingers) == [0, 5]  # fc2's fingers

    peak = irtools.analyze(path, metrics="spectral", fix_fingers="xmin_peak", keep_eigenvalues=True)
    for row, evals in zip(peak.layers, peak.eigenvalues):
        fit = fit_layer(evals, FitOptions(fix_fingers="xmin_peak"))
        assert (row["alpha"], row["xmin"], row["fit_status"]) == (fit.alpha, fit.xmin, "success")
        assert "num_fingers" not in row
    bad = CliRunner().invoke(main, ["analyze", path, "--fix-fingers", "clip"])
    assert bad.exit_code == 2 and "clip_xmax" in bad.output


def test_conv_slices_of_the_core_pass_are_weightwatchers_pool_false(tmp_path):
    """`irtools analyze --conv-slices` on an ONNX export: the rows and values WeightWatcher's pool=False gives
    for the same convolutions (one row per kernel position, row-major, eigenvalues x rf/2)."""
    pytest.importorskip("onnx")
    torch.manual_seed(4)
    model = nn.Sequential(nn.Conv2d(12, 16, 3), nn.ReLU(), nn.Conv2d(16, 10, (1, 2)))
    path = str(tmp_path / "convs.onnx")
    torch.onnx.export(model, (torch.zeros(1, 12, 8, 8),), path, dynamo=False, do_constant_folding=False)
    ours = irtools.analyze(path, metrics="spectral", conv_slices=True).details
    theirs = weightwatcher.WeightWatcher(model=model).analyze(pool=False)
    assert len(ours) == len(theirs) == 9 + 2
    for column in ("lambda_max", "alpha", "xmin", "xmax", "D", "num_pl_spikes", "log_norm", "alpha_weighted"):
        np.testing.assert_allclose(ours[column].to_numpy(float), theirs[column].to_numpy(float), rtol=1e-6,
                                   err_msg=column)
