"""WeightWatcher's options as `irtools.compat.weightwatcher` checks them: which are implemented (with
WeightWatcher 0.7.7's defaults), which are accepted only at their "off" values, the rules for their values,
and the one-line messages that refuse the rest (a value is shown only when it is a number, a bool or a short
string, else by its type: never a model's repr).
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from irtools.errors import IrtoolsError


DEFAULT_SAVEDIR = "ww-img"
WEAK_RANK_LOSS_TOLERANCE = 1e-6

#: Every keyword of WeightWatcher 0.7.7's analyze() and describe() after `model`, in its order. Each is
#: either computed as WeightWatcher computes it, accepted where WeightWatcher ignores it too, or refused in
#: one line naming it (tests/test_compat_ww_api.py walks WeightWatcher's own signatures against these).
WW_ANALYZE_KEYWORDS = (
    "layers", "min_evals", "max_evals", "min_size", "max_size", "max_N", "glorot_fix", "plot", "randomize", "savefig",
    "mp_fit", "conv2d_norm", "ww2x", "pool", "conv2d_fft", "fft", "deltas", "intra", "vectors", "channels", "stacked",
    "fix_fingers", "xmin_max", "max_fingers", "finger_thresh", "fit", "sparsify", "detX", "ERG", "svd_method",
    "tolerance", "start_ids", "pl_package", "xmax", "base_model", "peft", "inverse")
WW_DESCRIBE_KEYWORDS = (
    "layers", "min_evals", "max_evals", "min_size", "max_size", "max_N", "glorot_fix", "savefig", "ww2x", "pool",
    "conv2d_fft", "fft", "conv2d_norm", "intra", "channels", "stacked", "start_ids", "base_model", "peft")
#: WeightWatcher options irtools does not implement, with the values that mean "off" (accepted): svd_method
#: 'fast' and 'accurate' are the same exact eigenvalues here; analyze() takes intra= and sparsify= itself
#: (`ANALYZE_OWN`), describe() only intra=False.
UNSUPPORTED = {
    "conv2d_fft": (False,), "fft": (False,), "intra": (False,), "channels": (None,),
    "fit": ("PL", "power_law"), "svd_method": ("fast", "accurate"),
}
#: Where WeightWatcher 0.7.7 itself gives no result for an unsupported value (seen on a small torch model).
UNSUPPORTED_WHY = {
    "channels": "WeightWatcher 0.7.7 fails on a string too",
    "fft": "WeightWatcher 0.7.7 fails with it too",
    "fit": "WeightWatcher 0.7.7's TPL fits need pl_package='powerlaw' and fail (alpha -1)",
}
#: The unsupported options WeightWatcher's describe() has, and those it handles itself (stacked=: the one row).
DESCRIBE_UNSUPPORTED = ("conv2d_fft", "fft", "intra", "channels")
DESCRIBE_OWN = ("stacked",)
#: Options `analyze` handles itself (not fit options): base_model= (ΔW = W - W_base per matched layer),
#: peft= (LoRA B·A rows), detX= and its alias ERG= (the detX columns), deltas= (WeightWatcher's level-spacing
#: figures: nothing without plot=True, refused with it), inverse= (the ESD of 1 / λ), vectors= (eigenvector
#: localization columns), stacked= (the one stacked row), intra= with sparsify= (consecutive layer pairs;
#: sparsify matters only with intra).
ANALYZE_OWN = ("base_model", "peft", "detX", "ERG", "deltas", "inverse", "vectors", "stacked", "intra", "sparsify")
#: WeightWatcher's `peft` values that keep the base layers (every other true value analyses only B·A).
PEFT_WITH_BASE = "with_base"
DISTANCE_METHODS = ("raw", "euclidean", "cka")
#: WeightWatcher options irtools implements, with WeightWatcher's defaults (checked by `options_of`).
SUPPORTED = {
    "pool": True, "ww2x": False, "conv2d_norm": True, "glorot_fix": False, "min_size": None, "max_size": None,
    "fix_fingers": False, "xmin_max": None, "max_fingers": 10, "finger_thresh": 1.0, "xmax": None, "pl_package": "ww",
}
#: The options `describe` has (WeightWatcher's describe takes no fit options).
DESCRIBE_OPTIONS = ("pool", "ww2x", "conv2d_norm", "glorot_fix", "min_size", "max_size")
FIX_FINGERS = ("clip_xmax", "xmin_peak")


class UnsupportedOptionError(IrtoolsError, ValueError):
    """A WeightWatcher option (or value) that irtools does not implement."""


class UnknownOptionError(IrtoolsError, TypeError):
    """A keyword argument WeightWatcher does not have either."""


class UnsupportedMethodError(IrtoolsError, AttributeError):
    """A WeightWatcher method irtools does not implement (an AttributeError, so `hasattr` stays False)."""


def check_options(method: str, options: Mapping, allowed: Iterable[str] = UNSUPPORTED) -> None:
    """Refuse unknown keywords and unsupported options set to anything but their "off" value."""
    allowed = set(allowed)
    for key, value in options.items():
        if key not in allowed:
            raise UnknownOptionError(f"WeightWatcher.{method}() got an unexpected keyword argument '{key}'")
        if not any(value is ok or (type(value) is type(ok) and value == ok) for ok in UNSUPPORTED[key]):
            why = f"; {UNSUPPORTED_WHY[key]}" if key in UNSUPPORTED_WHY else ""
            raise UnsupportedOptionError(f"WeightWatcher.{method}(): option {key}={_shown(value)} is not supported "
                                         f"by irtools.compat.weightwatcher (supported: {key}="
                                         f"{' or '.join(map(repr, UNSUPPORTED[key]))}{why})")


def _shown(value) -> str:
    """A value in a message: numbers, booleans, None and short strings as themselves, anything else by
    its type only (never a model's repr)."""
    if value is None or isinstance(value, (bool, numbers.Number)) or (isinstance(value, str) and len(value) <= 40):
        return repr(value)
    return f"<{type(value).__name__}>"


@dataclass(frozen=True, slots=True)
class Options:
    """The implemented options of one call: per-slice rows (pool=False), conv scaling, and the spectral
    pass's fit attributes (fix_fingers, xmin_max, max_fingers, finger_thresh, clip_top)."""

    pool: bool = True
    conv2d_norm: bool = True
    fit: tuple = ()  # (name, value) pairs for the spectral pass
    peak_xmax: bool = False  # xmin_peak: WeightWatcher reports no xmax (the powerlaw package's fit has none)

    @property
    def clip_fingers(self) -> bool:
        return dict(self.fit).get("fix_fingers") == "clip_xmax"


def _refuse(method: str, message: str) -> UnsupportedOptionError:
    return UnsupportedOptionError(f"WeightWatcher.{method}(): {message}")


def _number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _check_fit_values(method: str, o: dict) -> None:
    """WeightWatcher's rules for the fit options (`valid_params`), refused in one line each."""
    if o["fix_fingers"] not in (False, None, *FIX_FINGERS):
        raise _refuse(method, f"fix_fingers must be False, 'clip_xmax' or 'xmin_peak', not {_shown(o['fix_fingers'])}")
    if o["xmin_max"] is not None and not (_number(o["xmin_max"]) and o["xmin_max"] > 0):
        raise _refuse(method, f"xmin_max must be None or a positive number, not {_shown(o['xmin_max'])}")
    max_fingers = o["max_fingers"]
    if max_fingers is not None and not (isinstance(max_fingers, numbers.Integral) and max_fingers >= 1):
        raise _refuse(method, f"max_fingers must be None or an integer >= 1, not {_shown(max_fingers)}")
    if not _number(o["finger_thresh"]):
        raise _refuse(method, f"finger_thresh must be a number, not {_shown(o['finger_thresh'])}")
    xmax = o["xmax"]
    if xmax is not None and not (isinstance(xmax, numbers.Integral) and not isinstance(xmax, bool) and xmax != 0):
        raise _refuse(method, f"xmax={_shown(xmax)} is not supported (supported: None, or a nonzero integer -k that "
                              f"leaves the k largest eigenvalues out of the fit; WeightWatcher 0.7.7 refuses "
                              f"'force' with its own fit and fails every fit with pl_package='powerlaw')")
    if xmax is not None and o["fix_fingers"]:
        raise _refuse(method, f"fix_fingers cannot be combined with xmax={_shown(xmax)} (WeightWatcher refuses it too)")
    if o["pl_package"] not in ("ww", "powerlaw") or (o["pl_package"] == "powerlaw" and o["fix_fingers"] != "xmin_peak"):
        raise _refuse(method, f"pl_package={_shown(o['pl_package'])} is supported only as 'ww', or 'powerlaw' with "
                              f"fix_fingers='xmin_peak' (WeightWatcher 0.7.7's powerlaw-package fits fail with powerlaw 2.0)")


def options_of(method: str, options: Mapping, allowed: Iterable[str] = tuple(SUPPORTED),
               unsupported: Iterable[str] = tuple(UNSUPPORTED)) -> Options:
    """Check a call's keyword options (`allowed` of `SUPPORTED`, the `unsupported` ones of `UNSUPPORTED` at
    their "off" values) and return what irtools does with them. glorot_fix, min_size and max_size are accepted
    and have no effect, as in WeightWatcher 0.7.7 (it stores glorot_fix under another key and ignores the sizes)."""
    allowed = tuple(allowed)
    check_options(method, {k: v for k, v in options.items() if k not in allowed}, unsupported)
    o = {**{k: SUPPORTED[k] for k in allowed}, **{k: v for k, v in options.items() if k in allowed}}
    for key in ("pool", "ww2x", "conv2d_norm", "glorot_fix"):
        if key in o and not isinstance(o[key], bool):
            raise _refuse(method, f"{key} must be True or False, not {_shown(o[key])}")
    for key in ("min_size", "max_size"):
        if key in o and o[key] is not None and not isinstance(o[key], numbers.Integral):
            raise _refuse(method, f"{key} must be None or an integer (WeightWatcher ignores it), not {_shown(o[key])}")
    pool, conv2d_norm = o["pool"] and not o["ww2x"], o["conv2d_norm"]
    if "fix_fingers" not in o:
        return Options(pool, conv2d_norm)
    _check_fit_values(method, o)
    fit = {"fix_fingers": o["fix_fingers"] or None}
    if fit["fix_fingers"]:
        fit.update(xmin_max=o["xmin_max"], max_fingers=o["max_fingers"], finger_thresh=float(o["finger_thresh"]))
    if o["xmax"] is not None:
        fit["clip_top"] = abs(int(o["xmax"]))
    return Options(pool, conv2d_norm, tuple(fit.items()), fit["fix_fingers"] == "xmin_peak")


def check_limits(min_evals: int, max_evals: int, max_n: int) -> None:
    """WeightWatcher's rules for the size limits: numbers, max_evals >= -1 (0: no limit), consistent."""
    for key, value in (("min_evals", min_evals), ("max_evals", max_evals), ("max_N", max_n)):
        if not isinstance(value, numbers.Real) or isinstance(value, bool) or math.isnan(value):
            raise UnsupportedOptionError(f"{key} must be a number, not {_shown(value)}")
    if max_evals < -1:
        raise UnsupportedOptionError(f"max_evals must be -1, 0 (no limit) or more, not {_shown(max_evals)}")
    if (min_evals and max_evals and min_evals >= max_evals) or max_n < max_evals or max_n < min_evals:
        raise UnsupportedOptionError(f"inconsistent limits: min_evals={min_evals}, max_evals={max_evals}, "
                                     f"max_N={max_n} (need min_evals < max_evals <= max_N)")


def savedir_of(savefig) -> str | None:
    """Where `plot=True` writes its figures: WeightWatcher's rule (True: ww-img, a string: that folder)."""
    if isinstance(savefig, bool):
        return DEFAULT_SAVEDIR if savefig else None
    if isinstance(savefig, (str, os.PathLike)):
        return os.fspath(savefig) or None
    raise UnsupportedOptionError(f"savefig must be a folder name or a bool, got {_shown(savefig)}")


def bool_option(method: str, key: str, value) -> bool:
    """A True/False option's value (numpy's bools too), else refused naming the option and the value's type."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    raise _refuse(method, f"{key} must be True or False, not a {type(value).__name__}")


def _peft_value(value, method: str = "analyze"):
    if value is None or isinstance(value, (bool, str)):
        return value
    raise UnsupportedOptionError(f"WeightWatcher.{method}(): peft must be False, True or a string such as "
                                 f"'with_base', not a {type(value).__name__}")


@dataclass(frozen=True, slots=True)
class AnalyzeFlags:
    """What `analyze` does besides the fit options: base_model=, peft=, detX= (or ERG=), inverse=, vectors=,
    stacked=."""

    base_model: object = None
    peft: object = False
    detx: bool = False
    inverse: bool = False
    vectors: bool = False
    stacked: bool = False
    intra: bool = False


def analyze_flags(options: dict, *, plot, randomize, mp_fit, tolerance) -> AnalyzeFlags:
    """Pop `analyze`'s own options (`ANALYZE_OWN`) from `options` and check them, with the True/False options
    analyze names (plot, randomize, mp_fit) and tolerance; the combinations irtools does not implement are
    refused in one line."""
    method = "analyze"
    for key, value in (("plot", plot), ("randomize", randomize), ("mp_fit", mp_fit)):
        bool_option(method, key, value)
    if not _number(tolerance):
        raise _refuse(method, f"tolerance must be a number, not {_shown(tolerance)}")
    peft = _peft_value(options.pop("peft", False))
    detx = bool_option(method, "detX", options.pop("detX", False))
    detx = bool_option(method, "ERG", options.pop("ERG", False)) or detx  # WeightWatcher: ERG=True sets detX=True
    if bool_option(method, "deltas", options.pop("deltas", False)) and plot:
        raise _refuse(method, "deltas=True with plot=True (WeightWatcher's level-spacing figures) is not "
                              "supported; without plot=True it changes nothing, as in WeightWatcher")
    flags = AnalyzeFlags(options.pop("base_model", None), peft, detx,
                         *(bool_option(method, k, options.pop(k, False)) for k in ("inverse", "vectors", "stacked",
                                                                                   "intra")))
    sparsify = bool_option(method, "sparsify", options.pop("sparsify", True))
    others = {"inverse": ("randomize=True" if randomize else "peft=" if peft else None),
              "vectors": ("plot=True (its vector figures)" if plot else "peft=" if peft else
                          "inverse=True" if flags.inverse else None),
              "stacked": ("randomize=True" if randomize else "peft=" if peft else "inverse=True" if flags.inverse
                          else "vectors=True" if flags.vectors else None),
              "intra": ("sparsify=True (WeightWatcher's default: an unseeded random 0/1 mask; sparsify=False is "
                        "supported)" if sparsify else "randomize=True" if randomize else "peft=" if peft else
                        "inverse=True" if flags.inverse else "vectors=True" if flags.vectors else
                        "stacked=True" if flags.stacked else None)}
    for key, other in others.items():
        if getattr(flags, key) and other:
            raise _refuse(method, f"{key}=True with {other} is not supported")
    return flags
