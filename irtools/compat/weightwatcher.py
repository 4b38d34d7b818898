"""WeightWatcher's API on irtools: `import irtools.compat.weightwatcher as ww`.

`ww.WeightWatcher(model=m).analyze()` walks the model the way WeightWatcher 0.7.7 does (its layer
ids, names, long names and layer types: PyTorch `named_modules()`, Keras `model.layers`, ONNX
initializers, state-dict `.weight` keys), hands the matrices to `irtools.analyze` as a weights-only
source, and returns a DataFrame with WeightWatcher's columns, column order, index and dtypes.
`describe`, `get_details`, `get_summary` and `distances` follow. Options irtools does not implement raise
`UnsupportedOptionError` naming the option instead of being ignored.

Implemented options (`SUPPORTED`, as WeightWatcher 0.7.7 computes them): fix_fingers="clip_xmax" (with
max_fingers, finger_thresh; adds num_fingers and raw_alpha), fix_fingers="xmin_peak" (with xmin_max;
WeightWatcher 0.7.7 fails that fit on every layer, irtools computes what it means: see
`irtools.passes.spectral.powerlaw`), an integer xmax, pool=False / ww2x=True (one row per conv kernel
position with slice_id, scaled by rf/2), conv2d_norm=False (conv eigenvalues unscaled); glorot_fix,
min_size and max_size are accepted and change nothing, as in WeightWatcher 0.7.7; base_model= (ΔW = W - W_base
per layer matched as WeightWatcher's delta iterator matches them), peft= (True / "peft_only" / any true value:
the LoRA B·A rows only, unscaled as WeightWatcher forms them, r eigenvalues each; "with_base": every layer and
W + B·A too; describe(peft=...) lists the same rows), detX=True or its alias ERG=True (detX_num, num_ERG_spikes,
ERG_gap, detX_val, detX_val_unrescaled), inverse=True (the ESD of 1 / λ per matrix: dense layers and conv
slices, not pooled convs; `_ww_inverse`), vectors=True (the 12 eigenvector localization columns;
`_ww_vectors`), stacked=True (one row for every layer's normalised matrix stacked; `_ww_stacked`), intra=True
with sparsify=False (a row per pair of consecutive layers; `_ww_intra`) and `distances(m1, m2, method="raw" |
"euclidean" | "cka")`. Accepted because WeightWatcher ignores them too: deltas=True without plot=True, sparsify
without intra, svd_method 'fast'/'accurate' (exact eigenvalues either way). Refused in one line: conv2d_fft,
fft, intra=True with sparsify=True (an unseeded random mask), channels, fit other than 'PL'/'power_law',
deltas=True or vectors=True with plot=True, base_model=/peft=/stacked=/intra= with pool=False, and the
combinations `_ww_options.analyze_flags` lists. `WW_ANALYZE_KEYWORDS` / `WW_DESCRIBE_KEYWORDS` list every
keyword WeightWatcher 0.7.7 takes; a test walks its signatures against them. An option's message names the
option and shows its value only when it is a number, a bool or a short string, else its type (never a model's repr).

Where irtools deliberately differs from WeightWatcher (documented, not hidden): a failed or
degenerate power-law fit is NaN with status "failed" and a warning saying why, not -1; Conv1d layers
are analysed as k pooled (out, in) slices (WeightWatcher mis-reads their 3-D kernels); weights keep
their stored precision (WeightWatcher casts to float32); `WeightWatcher(model=m).analyze(base_model=b)`
analyses m - b (WeightWatcher 0.7.7 drops a base_model given to analyze() or describe() unless model= is
given there too, and analyses m alone); vectors=True puts the eigenvector of the fit's xmin in the tail
(WeightWatcher's lands on either side by rounding).

The class is here; its parts live beside it, and every name they define is importable from here too:
`_ww_options` (which options are implemented or refused, and the messages), `_ww_layers` (WeightWatcher's layer
iterators, `layers=` filter and size limits), `_ww_tables` (the details records and the table layout), `_ww_peft`
(peft=), `_ww_base` (base_model= and distances), `_ww_detx` (detX=), `_ww_inverse` (inverse=), `_ww_vectors`
(vectors=), `_ww_stacked` (stacked=), `_ww_intra` (intra=), `_ww_plots` (plot=True) and `svd_edit`
(SVDSmoothing, SVDSharpness).
"""

from __future__ import annotations

import numbers
import os

import numpy as np

# Every name this module defined before the split stays importable from it (many are used here too).
from irtools.compat._ww_base import _aligned_delta, delta_layers, distance_table
from irtools.compat._ww_detx import detx_columns
from irtools.compat._ww_intra import intra_entries
from irtools.compat._ww_inverse import inverse_columns, inverse_part
from irtools.compat._ww_layers import (
    ANALYSED_NDIM, CONV1D, CONV2D, DENSE, EMBEDDING, ENUMERATORS, FLATTENED, LAYER_TYPES, NORM, UNKNOWN, WWLayer,
    _adapter_layers, _classify, _keras_file_layers, _onnx_file_layers, _state_array, _torch_array,
    _weights_file_layers, _ww_mats, keras_layers, layer_filter, layer_parts, model_layers, onnx_layers, source_kind,
    state_dict_layers, torch_layers, weight_layer, within_limits)
from irtools.compat._ww_options import (
    ANALYZE_OWN, DEFAULT_SAVEDIR, DESCRIBE_OPTIONS, DESCRIBE_OWN, DESCRIBE_UNSUPPORTED, DISTANCE_METHODS, FIX_FINGERS,
    PEFT_WITH_BASE, SUPPORTED, UNSUPPORTED, WEAK_RANK_LOSS_TOLERANCE, WW_ANALYZE_KEYWORDS, WW_DESCRIBE_KEYWORDS,
    Options, UnknownOptionError, UnsupportedMethodError, UnsupportedOptionError, _check_fit_values, _number,
    _peft_value, _refuse, _shown, analyze_flags, bool_option, check_limits, check_options, options_of, savedir_of)
from irtools.compat._ww_peft import _lora_product, _low_rank, _top_singular_diag, peft_entries
from irtools.compat._ww_stacked import stacked_entry
from irtools.compat._ww_tables import (
    MP_COLUMNS, SUMMARY_METRICS, _base_row, _slice_ranks, details_row, frame, mp_columns, option_columns, pooled_esd,
    randomized, summary_of)
from irtools.compat._ww_vectors import vector_columns
from irtools.errors import IrtoolsError
from irtools.frontends.weights_file import StoredArray
from irtools.passes.spectral.metrics import DEGENERATE

__all__ = ["LAYER_TYPES", "UnknownOptionError", "UnsupportedMethodError", "UnsupportedOptionError", "WeightWatcher"]


# -- the class -------------------------------------------------------------------------------------

class WeightWatcher:
    """WeightWatcher's class, computed by irtools. `model`: a torch.nn.Module, a Keras model, an ONNX
    ModelProto, a state dict, or a path (ONNX or Keras model file, weights file or folder)."""

    def __init__(self, model=None, framework=None, base_model=None, log_level=None, *, trust: bool = False,
                 device: str = "cpu"):
        self.model = model
        #: irtools' addition: the eigenvalue backend of every ESD here ("cpu", "cuda", "auto": as --device).
        self.device = device
        self.base_model = base_model
        self.framework = framework
        self.trust = trust
        self.details = None
        self.results = None
        #: What the last `analyze` left out and why (irtools' own addition: WeightWatcher is silent).
        self.skipped: list[dict] = []
        #: The last `analyze`'s irtools `Analysis`.
        self.analysis = None

    def __repr__(self) -> str:
        return f"\nAnalysis done: {self.details is not None}"

    def _layers(self, model, layers, start_ids: int) -> list[WWLayer]:
        model = model if model is not None else self.model
        if model is None:
            raise IrtoolsError("no model given: WeightWatcher(model=...) or analyze(model=...)")
        self.model = model
        if not isinstance(start_ids, numbers.Integral) or start_ids < 0:
            raise UnsupportedOptionError(f"start_ids must be 0 or a positive integer, got {_shown(start_ids)}")
        keep = layer_filter(layers)
        return [layer for layer in model_layers(model, int(start_ids), self.trust) if layer.analysable and keep(layer)]

    def analyze(self, model=None, layers=(), min_evals: int = 8, max_evals: int = 15000, max_N: int = 50000,
                plot: bool = False, randomize: bool = False, savefig=DEFAULT_SAVEDIR, mp_fit: bool = False,
                start_ids: int = 0, tolerance: float = WEAK_RANK_LOSS_TOLERANCE, seed: int = 0, **options):
        """Analyse every layer (or those `layers` selects) and return WeightWatcher's details table.
        `seed` (irtools' addition) seeds `randomize`'s shuffles (WeightWatcher's are unseeded).
        base_model= analyses W - W_base (WeightWatcher's delta iterator); peft= the LoRA B·A products
        (peft="with_base": the other layers and W + B·A too; a `peft` column on every row); detX=True
        adds detX_num, num_ERG_spikes, ERG_gap, detX_val, detX_val_unrescaled; inverse=True analyses the
        ESD of 1 / λ (`_ww_inverse`); vectors=True adds the eigenvector columns (`_ww_vectors`); stacked=True
        gives the one stacked row (`_ww_stacked`); intra=True, sparsify=False the rows of consecutive layer
        pairs (`_ww_intra`). The checks of these options: `_ww_options.analyze_flags`."""
        flags = analyze_flags(options, plot=plot, randomize=randomize, mp_fit=mp_fit, tolerance=tolerance)
        base_model, peft, detx, inverse, vectors, stacked = (flags.base_model, flags.peft, flags.detx, flags.inverse,
                                                             flags.vectors, flags.stacked)
        intra = flags.intra
        opts = options_of("analyze", options)
        check_limits(min_evals, max_evals, max_N)
        savedir = savedir_of(savefig)
        import irtools
        from irtools.frontends import OpenedSource

        base_model = base_model if base_model is not None else self.base_model
        _check_pooled("analyze", opts, base_model, peft)
        for key, on in (("stacked", stacked), ("intra", intra)):
            if on and (base_model is not None or not opts.pool):
                raise _refuse("analyze", f"{key}=True with " + ("base_model=" if base_model is not None else
                                                                "pool=False") + " is not supported")
        found = self._layers(model, layers, start_ids)

        def supported(layer: WWLayer) -> bool:
            return within_limits(weight_layer(layer, opts.conv2d_norm), min_evals, max_evals, max_N)

        entries: list[tuple] = [(layer, None, None) for layer in found]
        if base_model is not None:  # WeightWatcher's delta iterator is always pooled, never peft
            keep = layer_filter(layers)
            base_found = [x for x in model_layers(base_model, int(start_ids), self.trust) if x.analysable and keep(x)]
            entries = [(layer, None, None) for layer in delta_layers(found, base_found, supported)]
        elif peft:
            entries = peft_entries(found, peft == PEFT_WITH_BASE, supported)
        elif stacked:
            entries = [(*stacked_entry([x for x in found if supported(x)]), None)]
        elif intra:
            entries = [(*entry, None) for entry in intra_entries([x for x in found if supported(x)], opts.conv2d_norm)]
        by_key = {}
        for layer, wl, flag in entries:
            wl = weight_layer(layer, opts.conv2d_norm) if wl is None else wl
            for slice_id, part in enumerate(layer_parts(layer, wl, opts)):
                if inverse:
                    if part.rf > 1:
                        raise _refuse("analyze", f"inverse=True on {layer.name}, a pooled conv (rf={part.rf}), is not "
                                                 f"supported (WeightWatcher 0.7.7 inverts it once per slice); "
                                                 f"pool=False analyses its slices")
                    part, singular = inverse_part(part, layer.name)
                by_key[part.node] = (layer, wl, part, slice_id, flag, singular if inverse else None)
        found_by_id = {x.layer_id: x for x in found}
        fit = dict(opts.fit)
        source = OpenedSource(_model_name(self.model), "weights", layers=[entry[2] for entry in by_key.values()])
        analysis = irtools.analyze(source, metrics="spectral", device=self.device, min_evals=min_evals,
                                   max_evals=max_evals,
                                   max_n=max_N, keep_eigenvalues=True, fix_fingers=fit.pop("fix_fingers", None),
                                   fit_options=fit)  # MP fits here: see `mp_columns`
        records = []
        for row, evals in zip(analysis.layers or [], analysis.eigenvalues or []):
            layer, wl, part, slice_id, flag, singular = by_key[row["node"]]
            record = details_row(layer, wl, row, evals, mp_fit=mp_fit, tolerance=tolerance, part=part,
                                 device=self.device)
            if singular is not None:
                record.update(inverse_columns(singular(), wl.N))
            record.update(option_columns(row, opts, slice_id))
            if peft and base_model is None:  # WeightWatcher's delta iterator has no peft column
                record["peft"] = bool(flag)
            if type(wl).__name__ == "LowRankLayer":  # WeightWatcher's rank loss of its r singular values
                sv = np.sqrt(np.maximum(evals, 0.0))
                tol = float(sv.max()) * wl.N * np.finfo(np.float64).eps
                record["rank_loss"] = int(sv.size - np.count_nonzero(sv > tol))
            if intra:  # the second layer's rf, as WeightWatcher's copy of it keeps
                record.update(rf=weight_layer(found_by_id[layer.layer_id]).rf, Xflag=True)
            if vectors:
                record.update(vector_columns(part.matrices(), record["num_pl_spikes"]))
            if detx:
                record.update(detx_columns(evals, record.get("num_pl_spikes")))
            rand = None
            if randomize:
                columns, rand = randomized(part, evals, row["warning"] == DEGENERATE,
                                           np.random.default_rng([seed, layer.layer_id] + ([] if opts.pool else [slice_id])),
                                           self.device)
                record.update(columns)
            records.append(record)
            if plot and savedir:
                from irtools.compat._ww_plots import save_layer_figures

                plot_id = layer.layer_id if opts.pool else f"{layer.layer_id}:{slice_id}"  # WeightWatcher's plot_id
                save_layer_figures({**record, "layer_id": plot_id}, evals, savedir, mp_fit=mp_fit, rand_evals=rand,
                                   detx=detx)
        self.analysis, self.skipped = analysis, analysis.skipped
        self.details = frame(records)
        self.results = records
        return self.details

    def distances(self, model_1, model_2, method: str = "raw", layers=(), start_ids: int = 0, pool: bool = True,
                  channels=None):
        """WeightWatcher's `distances`: (mean delta_W, mean delta_b, table indexed by layer_id) over the
        supported layers of the two models taken pairwise in order. 'raw': ||W1 - W2||_F of the stored
        tensors and ||b1 - b2|| of the biases; 'euclidean': the mean over the layers' matrices of
        ||W1_i - W2_i||_F; 'cka': the mean of WeightWatcher's uncentred CKA (irtools.finetune.cka)."""
        if not isinstance(method, str) or method.lower() not in DISTANCE_METHODS:
            raise _refuse("distances", f"method must be one of {', '.join(DISTANCE_METHODS)}, not "
                                       f"{_shown(method)}")
        if pool is not True or channels is not None:
            raise _refuse("distances", "only pool=True and channels=None are supported")
        method = method.lower()
        keep = layer_filter(layers)

        def walk(model):
            found = [x for x in model_layers(model, int(start_ids), self.trust) if x.analysable and keep(x)]
            return [x for x in found if within_limits(weight_layer(x), 8, 15000, 50000)]

        return distance_table(zip(walk(model_1), walk(model_2)), method)

    def _edit_layers(self, model, layers, start_ids) -> list[WWLayer]:
        found = self._layers(model, layers, start_ids)
        return [x for x in found if x.layer_type in (DENSE, CONV1D, EMBEDDING, CONV2D) and len(x.weight.shape) in
                (2, 4) and within_limits(weight_layer(x), 8, 15000, 50000)]

    def SVDSmoothing(self, model=None, percent: float = 0.8, pool: bool = True, layers=(), method: str = "detX",
                     fit: str = "PL", plot: bool = False, start_ids: int = 0, svd_method: str = "fast"):
        """WeightWatcher's SVD smoothing: each supported layer keeps its k largest singular components
        (k by `method`, see `irtools.compat.svd_edit`), computed exactly (WeightWatcher approximates the
        truncation with a randomised TruncatedSVD). Returns the edited model, of the framework's own type
        (a copy: the model given is not modified)."""
        from irtools.compat import svd_edit
        from irtools.passes.spectral.mpfit import mp_fit
        from irtools.passes.spectral.powerlaw import fit_power_law

        if pool is not True:
            raise _refuse("SVDSmoothing", "only pool=True is supported (WeightWatcher refuses pool=False too)")
        if method not in svd_edit.SMOOTH_METHODS:
            raise _refuse("SVDSmoothing", f"method must be one of {', '.join(svd_edit.SMOOTH_METHODS)}, not "
                                          f"{_shown(method)}")
        for key, value, ok, supported in (
                ("percent", percent, _number(percent), "a number"),
                ("fit", fit, isinstance(fit, str) and fit in ("PL", "power_law"), "'PL' or 'power_law'"),
                ("plot", plot, plot is False, "False"),
                ("svd_method", svd_method, isinstance(svd_method, str) and svd_method in ("fast", "accurate"),
                 "'fast' or 'accurate'")):
            if not ok:
                raise _refuse("SVDSmoothing", f"{key}={_shown(value)} is not supported (supported: {supported})")
        model = model if model is not None else self.model
        weights = {}
        for layer in self._edit_layers(model, layers, start_ids):
            w = np.asarray(layer.weight.load())
            mats = _ww_mats(layer)
            evals = pooled_esd(mats, 1.0, self.device)
            m, rf = min(mats[0].shape), len(mats)
            choice = method
            if method == "auto":
                choice = "rmt" if fit_power_law(evals).alpha > 6 else "detX"
            if choice == "detX":
                num = detx_columns(evals, None)["detX_num"]
            elif choice == "alpha_min":
                num = fit_power_law(evals).num_pl_spikes
            elif choice == "rmt":
                num = mp_fit(evals, max(mats[0].shape), m)["num_spikes"]
            else:
                num = int(percent * m * rf)
            weights[layer.longname] = svd_edit.apply_components(w, layer.layer_type, rf, int(num))
        return svd_edit.edited(model, weights)

    def SVDSharpness(self, model=None, pool: bool = True, layers=(), plot: bool = False, start_ids: int = 0):
        """WeightWatcher's SVD sharpness: each supported layer loses as many of its largest singular
        components as the MP fit of its element-shuffled matrices finds spikes (the shuffles drawn with
        numpy's global `np.random.permutation`, one per matrix in layer order, as WeightWatcher draws
        them). Returns the edited model, of the framework's own type (a copy)."""
        from irtools.compat import svd_edit
        from irtools.passes.spectral.mpfit import mp_fit

        for key, value, ok in (("pool", pool, pool is True), ("plot", plot, plot is False)):
            if not ok:
                raise _refuse("SVDSharpness", f"{key}={_shown(value)} is not supported (only pool=True and "
                                              f"plot=False are)")
        model = model if model is not None else self.model
        weights = {}
        for layer in self._edit_layers(model, layers, start_ids):
            mats = _ww_mats(layer)
            shuffled = [w.reshape(-1)[np.random.permutation(np.arange(w.size))].reshape(w.shape) for w in mats]
            evals = pooled_esd(shuffled, 1.0, self.device)
            spikes = mp_fit(evals, max(mats[0].shape), min(mats[0].shape))["num_spikes"]
            weights[layer.longname] = svd_edit.apply_components(np.asarray(layer.weight.load()), layer.layer_type,
                                                                len(mats), -int(spikes))
        return svd_edit.edited(model, weights)

    def get_ESD(self, model=None, layer=None, random: bool = False, params=None, seed: int = 0) -> np.ndarray:
        """The sorted eigenvalues of one layer (by id or name) that `describe` lists; with `random`, those
        of its element-shuffled matrices (as `randomize` pools them). As in WeightWatcher, without the
        0.5 scaling that `analyze` applies to pooled conv2d ESDs. `params` (WeightWatcher's dict of
        analyze options) is supported only as None, its default."""
        import irtools
        from irtools.frontends import OpenedSource

        if params is not None:
            raise _refuse("get_ESD", f"params={_shown(params)} is not supported (only None: WeightWatcher's "
                                     f"default options)")
        if not isinstance(layer, (numbers.Integral, str)) or isinstance(layer, bool):
            raise UnsupportedOptionError(f"get_ESD: layer must be a layer id or name, got {_shown(layer)}")
        found = [x for x in self._layers(model, [layer], 0) if within_limits(weight_layer(x), 8, 15000, 50000)]
        if not found:
            raise IrtoolsError(f"get_ESD: no analysable layer {_shown(layer)} (see describe())")
        wl = weight_layer(found[0])
        analysis = irtools.analyze(OpenedSource(_model_name(self.model), "weights", layers=[wl]), metrics="spectral",
                                   device=self.device,
                                   keep_eigenvalues=True)
        evals = analysis.eigenvalues[0]
        if random:
            degenerate = analysis.layers[0]["warning"] == DEGENERATE
            evals = randomized(wl, evals, degenerate, np.random.default_rng([seed, found[0].layer_id]), self.device)[1]
        return evals / wl.eigen_scale

    def get_details(self):
        """The table of the last `analyze`."""
        return self.details

    def get_summary(self, details=None) -> dict:
        """Means over layers of log_norm, alpha, alpha_weighted, log_alpha_norm, log_spectral_norm,
        stable_rank (and mp_softrank when fitted), as WeightWatcher returns them."""
        return summary_of(self.details if details is None else details)

    def describe(self, model=None, layers=(), min_evals: int = 8, max_evals: int = 15000, max_N: int = 50000,
                 savefig=DEFAULT_SAVEDIR, start_ids: int = 0, base_model=None, peft=False, **options):
        """The layers `analyze` would analyse, with their shapes, without computing anything. peft= lists
        the rows `analyze(peft=...)` has (WeightWatcher's describe: a B·A row's num_evals is M x rf of the
        product, not its rank; a `peft` column on every row); base_model= the layers of the delta iterator
        (the model's; peft= is then ignored, as in WeightWatcher)."""
        peft = _peft_value(peft, "describe")
        stacked = bool_option("describe", "stacked", options.pop("stacked", False))
        opts = options_of("describe", options, DESCRIBE_OPTIONS, DESCRIBE_UNSUPPORTED)
        check_limits(min_evals, max_evals, max_N)
        savedir_of(savefig)
        base_model = base_model if base_model is not None else self.base_model
        _check_pooled("describe", opts, base_model, peft)
        if stacked and (peft or not opts.pool):
            raise _refuse("describe", f"stacked=True with {'peft=' if peft else 'pool=False'} is not supported")
        found = self._layers(model, layers, start_ids)

        def supported(layer: WWLayer) -> bool:
            return within_limits(weight_layer(layer, opts.conv2d_norm), min_evals, max_evals, max_N)

        if base_model is not None:  # WeightWatcher's delta iterator: the model's layers (no peft, no stack)
            model_layers(base_model, int(start_ids), self.trust)  # the base must be a model irtools reads
        elif stacked:  # the stack is built (every weight read), as WeightWatcher builds it here too
            layer, wl = stacked_entry([x for x in found if supported(x)])
            return frame([{**_base_row(layer, wl), "num_evals": wl.M * wl.rf}])
        elif peft:
            records = []
            for layer, wl, flag in peft_entries(found, peft == PEFT_WITH_BASE, supported):
                wl = weight_layer(layer, opts.conv2d_norm) if wl is None else wl
                records.append({**_base_row(layer, wl), "num_evals": wl.M * wl.rf if flag else wl.num_evals,
                                "peft": bool(flag)})
            return frame(records)
        records = []
        for layer in found:
            wl = weight_layer(layer, opts.conv2d_norm)
            for slice_id, part in enumerate(layer_parts(layer, wl, opts)):
                if within_limits(part, min_evals, max_evals, max_N):
                    records.append({**_base_row(layer, wl), "num_evals": part.num_evals,
                                    **({} if opts.pool else {"slice_id": slice_id})})
        return frame(records)

    def __getattr__(self, name: str):
        if name.startswith("_"):
            raise AttributeError(name)
        raise UnsupportedMethodError(f"WeightWatcher.{name} is not supported by irtools.compat.weightwatcher "
                                     f"(supported: analyze, describe, distances, get_details, get_summary, get_ESD, SVDSmoothing, SVDSharpness)")


def _check_pooled(method: str, opts: Options, base_model, peft) -> None:
    """base_model= and peft= are pooled analyses: WeightWatcher 0.7.7 applies pool=False only to its size
    limits there (per matrix), and still forms one pooled row per layer; irtools refuses the mix."""
    if not opts.pool and (base_model is not None or peft):
        option = "base_model=" if base_model is not None else f"peft={_shown(peft)}"
        raise _refuse(method, f"{option} is supported only with pool=True (and ww2x=False)")


def _model_name(model) -> str:
    return os.fspath(model) if isinstance(model, (str, os.PathLike)) else type(model).__name__
