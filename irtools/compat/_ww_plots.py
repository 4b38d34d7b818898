"""WeightWatcher's per-layer figures for `analyze(plot=True)`, drawn on matplotlib's Agg canvas.

Files are named as WeightWatcher names them, `<savefig>/ww.layer<id>.<figure>.png`, and written
atomically: `esd` (log-log ESD and the fitted power law), `esd2` (linear histogram, xmin),
`esd3` (log10 histogram, xmin and xmax), `esd4` (KS distance D against the candidate xmin),
`esd5` (alpha against the candidate xmin); with `mp_fit` `mpfit2` (the Marchenko-Pastur fit of the
unit-mean ESD) plus `mpfit1` for square layers (the quarter-circle law of the singular values); with
`randomize` `randesd1`/`randesd2` (ESD and randomized ESD) and the randomized ESD's mpfit figures; with
`detX` `detX` (log10 histogram of the unit-mean ESD, the detX = 1 eigenvalue and the fit's xmin).
"""

from __future__ import annotations

import math
import os

import numpy as np

from irtools import files
from irtools.passes.spectral.powerlaw import EVALS_THRESH, SMALL_N_CUTOFF

SIZE, DPI = (5.0, 3.6), 80
MAX_CANDIDATES = 200  # xmin candidates drawn in esd4/esd5 (evenly spaced over all of them)


def _figure():
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=SIZE, dpi=DPI)
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()


def _save(fig, path: str) -> None:
    fig.subplots_adjust(left=0.14, right=0.97, bottom=0.13, top=0.85)  # fixed: tight_layout costs 0.3 s a figure
    files.write_atomic(path, lambda tmp: fig.savefig(tmp, format="png"))


def fit_curves(evals: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(xmins, alphas, Ds) of the power-law fit at each candidate xmin (at most `MAX_CANDIDATES`),
    by the fit's own formulas (the bias-corrected alpha below `SMALL_N_CUTOFF` eigenvalues)."""
    x = np.sort(np.asarray(evals, dtype=np.float64))
    x = x[x > EVALS_THRESH]
    if x.size < 3:
        return np.empty(0), np.empty(0), np.empty(0)
    logs = np.log(x)
    tail_sums = np.cumsum(logs[::-1])[::-1]
    shift = 1 if x.size < SMALL_N_CUTOFF else 0
    xmins, alphas, ds = [], [], []
    for i in np.unique(np.linspace(0, x.size - 2, min(MAX_CANDIDATES, x.size - 1)).astype(int)):
        n = x.size - i
        s = tail_sums[i] - n * logs[i]
        if s <= 0:
            continue
        alpha = 1.0 + (n - shift) / s
        d = np.max(np.abs(1.0 - np.exp((1.0 - alpha) * (logs[i:] - logs[i])) - np.arange(n) / n))
        xmins.append(x[i])
        alphas.append(alpha)
        ds.append(d)
    return np.array(xmins), np.array(alphas), np.array(ds)


def _title(record: dict) -> str:
    return f"Layer {record['layer_id']} ({record['longname']})"


def _hist(ax, values):
    values = values[np.isfinite(values)]
    if values.size:
        ax.hist(values, bins=min(100, max(10, values.size)), density=True)


def save_layer_figures(record: dict, evals: np.ndarray, savedir: str, *, mp_fit: bool = False,
                       rand_evals: np.ndarray | None = None, detx: bool = False) -> list[str]:
    """Write the layer's figures into `savedir` (created if needed); returns the paths written. With
    `rand_evals` (randomize) also randesd1/randesd2 and the random ESD's MP figures, which replace the
    layer's own mpfit files as they do in WeightWatcher."""
    from irtools.reports.html import esd_png

    os.makedirs(savedir, exist_ok=True)
    stem = os.path.join(savedir, f"ww.layer{record['layer_id']}")
    alpha, xmin, xmax = record["alpha"], record["xmin"], record["xmax"]
    fitted = record["status"] == "success" and math.isfinite(alpha)
    written = []

    def path(name):
        written.append(f"{stem}.{name}.png")
        return written[-1]

    title = f"{_title(record)}: " + (f"alpha={alpha:.3f}, D={record['D']:.3f}, xmin={xmin:.3g}" if fitted
                                     else "PL FIT FAILED")
    png = esd_png(evals, alpha, xmin, title, record.get("warning", ""))
    with files.atomic_path(path("esd")) as tmp, open(tmp, "wb") as fh:
        fh.write(png)

    shown = evals[evals > (xmin / 100 if fitted else 0.004 * float(np.max(evals)))]
    for name, values, label in (("esd2", shown, "Lin-Lin"), ("esd3", np.log10(shown[shown > 0]), "Log-Lin")):
        fig, ax = _figure()
        _hist(ax, values)
        if fitted:
            scale = np.log10 if name == "esd3" else (lambda v: v)
            ax.axvline(scale(xmin), color="red", label="xmin")
            if name == "esd3":
                ax.axvline(scale(xmax), color="orange", label="xmax")
            ax.legend(fontsize=7)
        ax.set_title(f"{label} ESD for {_title(record)}", fontsize=9)
        _save(fig, path(name))

    xmins, alphas, ds = fit_curves(evals)
    for name, values, label in (("esd4", ds, "D_KS"), ("esd5", alphas, "alpha")):
        fig, ax = _figure()
        ax.plot(xmins, values, label=label)
        if fitted:
            ax.axvline(xmin, color="red", label="xmin")
        ax.set_xlabel("xmin")
        ax.set_ylabel(label)
        ax.set_title(f"{label} vs. xmin, {_title(record)}", fontsize=9)
        ax.legend(fontsize=7)
        _save(fig, path(name))

    if mp_fit:
        _mp_figures(record, "", evals, _title(record), path)
    if rand_evals is not None:
        _random_figures(record, evals, rand_evals, path)
        _mp_figures(record, "rand_", rand_evals, _title(record) + " Randomized", path)
    if detx:
        _detx_figure(record, evals, path)
    return written


def _detx_figure(record: dict, evals: np.ndarray, path) -> None:
    """detX: WeightWatcher's apply_detX figure: the log10 histogram of the eigenvalues rescaled to mean
    one, the detX = 1 eigenvalue (purple) and the power-law xmin (red) on the same scale."""
    x = np.asarray(evals, dtype=np.float64)
    total = float(np.sum(x))
    if not total > 0:
        return
    scaled = x * (x.size / total)
    fig, ax = _figure()
    _hist(ax, np.log10(scaled[scaled > EVALS_THRESH]))
    value = record.get("detX_val_unrescaled")
    if isinstance(value, float) and value > 0:
        ax.axvline(np.log10(value), color="purple", label="detX=1")
    xmin = record.get("xmin")
    if isinstance(xmin, float) and math.isfinite(xmin) and xmin > 0:
        ax.axvline(np.log10(xmin * x.size / total), color="red", label="PL lambda_min")
    ax.set_xlabel("log10 eigenvalues (norm scaled)")
    ax.set_title(f"DetX constraint for {record['name']} ({_title(record)})", fontsize=9)
    ax.legend(fontsize=7)
    _save(fig, path("detX"))


def _random_figures(record: dict, evals: np.ndarray, rand_evals: np.ndarray, path) -> None:
    """randesd1 / randesd2: the ESD and the randomized ESD, linear and log10, with the largest random
    eigenvalue marked."""
    x, r = evals[evals > 0], rand_evals[rand_evals > 0]
    for name, scale, label in (("randesd1", lambda v: v, "ESD"), ("randesd2", np.log10, "Log10 ESD")):
        fig, ax = _figure()
        ax.hist(scale(x), bins=100, density=True, color="g", label="original")
        ax.hist(scale(r), bins=100, density=True, color="r", alpha=0.5, label="random")
        ax.axvline(scale(record["max_rand_eval"]), color="orange", label="max rand")
        ax.set_title(f"{_title(record)}: {label} & Random {label}", fontsize=9)
        ax.legend(fontsize=7)
        _save(fig, path(name))


def _mp_figures(record: dict, prefix: str, evals: np.ndarray, title: str, path) -> None:
    """mpfit2: histogram of the unit-mean ESD with the fitted MP density; mpfit1 (Q = 1): singular values
    with the quarter-circle law. `prefix` picks the record's MP columns ("" or "rand_")."""
    q, sigma = record["Q"], record[prefix + "sigma_mp"]
    if not math.isfinite(sigma) or sigma <= 0:
        return
    scaled = evals * record[prefix + "W_scale"] ** 2
    if q == 1.0:
        fig, ax = _figure()
        sv = np.sqrt(np.clip(scaled, 0, None))
        _hist(ax, sv)
        grid = np.linspace(0, 2 * sigma, 200)
        ax.plot(grid, np.sqrt(np.clip(4 * sigma**2 - grid**2, 0, None)) / (math.pi * sigma**2), "r", label="QC fit")
        ax.set_title(f"QC SSD, sigma auto-fit for {title}", fontsize=9)
        ax.legend(fontsize=7)
        _save(fig, path("mpfit1"))
    fig, ax = _figure()
    _hist(ax, scaled)
    lo, hi = (sigma * (1 - 1 / math.sqrt(q))) ** 2, (sigma * (1 + 1 / math.sqrt(q))) ** 2
    grid = np.linspace(max(lo, 1e-12), hi, 200)
    density = q / (2 * math.pi * sigma**2 * grid) * np.sqrt(np.clip((hi - grid) * (grid - lo), 0, None))
    ax.plot(grid, density, "r", label="MP fit")
    ax.set_title(f"MP ESD for {title}\nQ={q:.3g} sigma_mp={sigma:.3g} spikes={record[prefix + 'num_spikes']}",
                 fontsize=9)
    ax.legend(fontsize=7)
    _save(fig, path("mpfit2"))
