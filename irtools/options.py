"""The analysis options, defined once: `AnalysisOptions`.

Every command that analyses (`analyze`, `audit`, `report`, `compare`, `annotate`) gets its analysis
options from this one dataclass: each field carries its command-line name, help, type or choices
and default (in its `metadata`), and `click_options` generates the click options from the fields,
so the commands accept the same options under the same names. `irtools.analyze(source, options)`
and the audit task take the same object (`irtools.analyze`'s keyword arguments build it).

Fields that set a pass's option name it (`pass_field`), and have that field's default unless the
command line's default differs on purpose (`device` is "auto", the spectral pass's `backend` is
"cpu"); `tests/test_options.py` checks that. This module imports nothing heavy (no numpy): the
command line imports it to build its options.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

#: Metric families, in the order they are computed.
METRIC_FAMILIES = ("spectral", "reuse")
#: `irtools.frontends.FRAMEWORKS` (kept here so that building the command line imports no frontend).
FRAMEWORKS = ("auto", "onnx", "torch", "tf", "jax")
#: Fields that change no number: left out of `digest` (an audit's result file names).
NUMBER_NEUTRAL = ("device",)
#: Exit codes of the analysing commands (documented in their help).
EXIT_OK, EXIT_ERROR, EXIT_PARTIAL = 0, 2, 3
PARTIAL_HELP = ("Exit code 0: everything asked for was computed; 2: an error, nothing written; 3: partial: a "
                "metric family asked for with --metrics could not be computed, the other one is reported and a "
                "note says why.")


def _opt(default: Any, cli: str | None, help: str = "", *, choices: tuple | None = None, type: Any = None,
         metavar: str | None = None, pass_field: tuple[str, str] | None = None, hidden: bool = False,
         multiple: bool = False, show_default: bool = True) -> Any:
    """A field with its command-line definition in `metadata` (`cli=None`: library only)."""
    meta = {"cli": cli, "help": help, "choices": choices, "type": type, "metavar": metavar,
            "pass_field": pass_field, "hidden": hidden, "multiple": multiple, "show_default": show_default}
    if isinstance(default, (list, dict, set)):
        raise TypeError("option defaults must be immutable")
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class AnalysisOptions:
    """What is analysed and how: the same for `irtools.analyze`, every command and every audit task."""

    # -- what is computed
    metrics: str | None = _opt(
        None, "--metrics", "Comma-separated metric families: spectral, reuse (default: both; a family that cannot "
        "be computed is left out with a note; asked for explicitly, it makes the exit code 3, partial).",
        metavar="LIST", show_default=False)
    # -- how the source is opened
    input_shapes: tuple[tuple[str, tuple[int, ...]], ...] = _opt(
        (), "--input-shape", "Fix the dims of a dynamic input (repeatable), e.g. image=1,3,224,224; PyTorch "
        "sources without example inputs need them.", metavar="NAME=D1,D2,...", multiple=True, show_default=False)
    framework: str = _opt("auto", "--framework", "Read the source as this framework's (default: recognised from "
                          "the source).", choices=FRAMEWORKS)
    opset: int = _opt(17, "--opset", "ONNX opset of the graph exported from a framework source.", type=int)
    trust: bool = _opt(False, "--trust", "Allow full unpickling of PyTorch files, .pt2 ExportedProgram, "
                       "TorchScript and TensorFlow SavedModel files (runs code from the file: only for files you "
                       "trust).")
    layout: str = _opt("torch", "--layout", "Kernel layout of weights-only files: torch (out, in, k...) or keras "
                       "(k..., in, out).", choices=("torch", "keras"))
    # -- which layers are analysed (the weights and spectral passes)
    min_evals: int = _opt(8, "--min-evals", "Skip layers with fewer eigenvalues.", type=int,
                          pass_field=("spectral", "min_evals"))
    max_evals: int = _opt(15000, "--max-evals", "Skip layers with more eigenvalues (0: no limit).", type=int,
                          pass_field=("spectral", "max_evals"))
    max_n: int = _opt(50000, "--max-n", "Skip layers whose larger side N exceeds this (0: no limit).", type=int,
                      pass_field=("spectral", "max_n"))
    conv_slices: bool = _opt(False, "--conv-slices", "One row per conv kernel position instead of one pooled ESD.",
                             pass_field=("weights", "conv_slices"))
    split_qkv: bool = _opt(False, "--split-qkv", "Split fused (d, 3d) projections into q, k and v.",
                           pass_field=("weights", "split_qkv"))
    # -- how the spectra are computed and fitted (the spectral pass)
    randomize: bool = _opt(False, "--randomize", "Also compare with element-shuffled weights (rand_distance).",
                           pass_field=("spectral", "randomize"))
    mp_fit: bool = _opt(False, "--mp-fit", "Also fit the Marchenko-Pastur bulk (num_spikes, mp_softrank).",
                        pass_field=("spectral", "mp_fit"))
    method: str = _opt("auto", "--eigen-method", "Eigenvalues from the Gram matrix W^T W, or the SVD (the "
                       "reference's route); auto: the Gram matrix, measured faster at every size.",
                       choices=("auto", "svd", "gram"), pass_field=("spectral", "method"))
    device: str = _opt("auto", "--device", "Where eigenvalues are computed. auto: a GPU when the installed PyTorch "
                       "is a CUDA build (read from torch/version.py), the NVIDIA driver loads (libcuda.so.1) and "
                       "cuInit finds a device (torch is imported only then), else the CPU; cpu; cuda (every "
                       "visible GPU); cuda:N. The numbers are the same (float64 everywhere).",
                       metavar="auto|cpu|cuda|cuda:N", pass_field=("spectral", "backend"))
    small_n_xmin: str = _opt("D", "--small-n-xmin", "xmin rule for spectra under 20 eigenvalues: D = what "
                             "WeightWatcher 0.7.7 reports (argmin D), J = its intermediate J = D - 0.868/sqrt(n) "
                             "choice.", choices=("D", "J"), pass_field=("spectral", "small_n_xmin"))
    fix_fingers: str | None = _opt(None, "--fix-fingers", "WeightWatcher's fix for spurious large eigenvalues: "
                                   "clip_xmax refits without the largest ones (adds num_fingers, raw_alpha); "
                                   "xmin_peak searches xmin near the peak of the log ESD.",
                                   choices=("clip_xmax", "xmin_peak"), pass_field=("spectral", "fix_fingers"),
                                   show_default=False)
    # WeightWatcher's finer fit options: library only (`irtools.analyze(..., fit_options={...})`).
    xmin_max: float | None = _opt(None, None, pass_field=("spectral", "xmin_max"))
    max_fingers: int | None = _opt(10, None, pass_field=("spectral", "max_fingers"))
    finger_thresh: float = _opt(1.0, None, pass_field=("spectral", "finger_thresh"))
    clip_top: int = _opt(0, None, pass_field=("spectral", "clip_top"))
    base: str | None = _opt(None, "--base", "The base model (any source) to compare against: per layer matched by "
                            "name, the spectral metrics of W - W_base and the distances between W and W_base "
                            "(WeightWatcher's base_model= and distances); a PEFT adapter is merged into it first.",
                            metavar="BASE", show_default=False)
    seq_len: int | None = _opt(None, "--seq-len", "Token count of the trace input built for a text checkpoint "
                               "folder or hub id (default 128, capped at the model's maximum positions).",
                               type=int, show_default=False)

    def __post_init__(self):
        # normalised forms, so that equal options compare (and hash, and digest) equal
        if self.metrics is not None and not isinstance(self.metrics, str):
            object.__setattr__(self, "metrics", ",".join(self.metrics))
        if self.metrics is not None:
            object.__setattr__(self, "metrics", ",".join(parse_metrics(self.metrics)))
        shapes = self.input_shapes
        if isinstance(shapes, Mapping):
            shapes = shapes.items()
        object.__setattr__(self, "input_shapes",
                           tuple((str(k), tuple(int(d) for d in v)) for k, v in (shapes or ())))

    # -- building ------------------------------------------------------------------------------
    @classmethod
    def build(cls, options: AnalysisOptions | None = None, /, **kwargs: Any) -> AnalysisOptions:
        """`options` (or the defaults) with the given fields replaced; an unknown name is a TypeError
        naming it (like an unknown keyword argument)."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(kwargs) - names)
        if unknown:
            raise TypeError(f"unknown analysis option(s): {', '.join(unknown)}")
        base = options if options is not None else cls()
        return dataclasses.replace(base, **kwargs) if kwargs else base

    @classmethod
    def from_cli(cls, params: dict[str, Any]) -> AnalysisOptions:
        """The options of a command from its click parameters; the analysis ones are removed from
        `params` (what is left is the command's own)."""
        from irtools.ir.shapes import parse_input_shapes

        values = {}
        for f in cli_fields():
            if f.name in params:
                values[f.name] = params.pop(f.name)
        if "input_shapes" in values:
            values["input_shapes"] = parse_input_shapes(values["input_shapes"] or ())
        if params.pop("no_limits", False):
            values.update(NO_LIMITS)
        return cls(**values)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AnalysisOptions:
        """From `to_dict`'s JSON-ready form (fields it lacks keep their defaults)."""
        data = dict(data)
        data["input_shapes"] = tuple((k, tuple(v)) for k, v in data.get("input_shapes", ()))
        return cls.build(**data)

    # -- using -----------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @property
    def families(self) -> tuple[str, ...]:
        """The metric families to compute (both by default)."""
        return parse_metrics(self.metrics) if self.metrics is not None else METRIC_FAMILIES

    @property
    def explicit_metrics(self) -> bool:
        """Whether the families were asked for (then one left out makes the result partial)."""
        return self.metrics is not None

    def analyze_kwargs(self) -> dict:
        """The fields as keyword arguments of `irtools.analyze` (input_shapes as a dict or None)."""
        out = self.to_dict()
        out["input_shapes"] = dict(self.input_shapes) or None
        return out

    def open_kwargs(self) -> dict:
        """Keyword arguments of `irtools.frontends.open_source`."""
        return dict(input_shapes=dict(self.input_shapes) or None, trust=self.trust, layout=self.layout,
                    framework=self.framework, opset=self.opset, seq_len=self.seq_len)

    def open(self, source: Any):
        """`irtools.frontends.open_source(source)` with these options."""
        from irtools.frontends import open_source

        return open_source(source, **self.open_kwargs())

    def weights_options(self) -> dict:
        return pass_options(self, "weights")

    def spectral_options(self) -> dict:
        return pass_options(self, "spectral")

    def digest(self) -> str:
        """10 hex digits naming these options (and the irtools version) in result file names; the
        fields that change no number (`device`) are left out."""
        from irtools import __version__

        hashed = {k: v for k, v in self.to_dict().items() if k not in NUMBER_NEUTRAL}
        text = json.dumps({"options": hashed, "irtools": __version__}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:10]


#: What --no-limits sets: every layer is analysed whatever its size.
NO_LIMITS = {"min_evals": 1, "max_evals": 0, "max_n": 0}


def parse_metrics(metrics: str | Iterable[str]) -> tuple[str, ...]:
    """The metric families named (comma-separated or a list), checked and deduplicated."""
    from irtools.errors import IrtoolsError

    items = [m.strip() for m in (metrics.split(",") if isinstance(metrics, str) else metrics) if m.strip()]
    unknown = [m for m in items if m not in METRIC_FAMILIES]
    if unknown or not items:
        raise IrtoolsError(f"--metrics: unknown metric family {', '.join(unknown) or '(none)'} "
                           f"(available: {', '.join(METRIC_FAMILIES)})")
    return tuple(dict.fromkeys(items))


def pass_options(options: AnalysisOptions, pass_name: str) -> dict:
    """{pass option: value} of the fields that set an option of the pass `pass_name`."""
    out = {}
    for f in dataclasses.fields(options):
        target = f.metadata.get("pass_field")
        if target is not None and target[0] == pass_name:
            out[target[1]] = getattr(options, f.name)
    return out


def cli_fields() -> list[dataclasses.Field]:
    """The fields with a command-line option, in definition order."""
    return [f for f in dataclasses.fields(AnalysisOptions) if f.metadata.get("cli")]


def _click_option(f: dataclasses.Field):
    import click

    m = f.metadata
    kwargs: dict[str, Any] = {"help": m["help"], "hidden": m["hidden"]}
    if m["metavar"]:
        kwargs["metavar"] = m["metavar"]
    if m["multiple"]:
        kwargs["multiple"] = True
    elif f.type in ("bool", bool) or isinstance(f.default, bool):
        kwargs["is_flag"] = True
    else:
        kwargs["default"] = f.default
        kwargs["show_default"] = m["show_default"]
        if m["choices"]:
            kwargs["type"] = click.Choice(list(m["choices"]))
        elif m["type"] is not None:
            kwargs["type"] = m["type"]
    return click.option(m["cli"], f.name, **kwargs)


#: The fields that say how a source is opened (`irtools inspect` takes only these).
SOURCE_FIELDS = ("input_shapes", "framework", "opset", "trust", "layout", "seq_len")


def click_options(f: Callable | None = None, *, only: Iterable[str] | None = None) -> Callable:
    """Decorator: the analysis options (every `cli` field, then --no-limits) as click options; the
    command gets them as keyword arguments named like the fields (`AnalysisOptions.from_cli`).
    `click_options(only=names)`: those fields alone (no --no-limits unless named)."""
    import click

    def decorate(func: Callable) -> Callable:
        names = None if only is None else set(only)
        opts = [_click_option(fl) for fl in cli_fields() if names is None or fl.name in names]
        if names is None or "no_limits" in names:
            opts.append(click.option("--no-limits", "no_limits", is_flag=True,
                                     help="Analyse every layer whatever its size (sets --min-evals 1, --max-evals 0 "
                                          "and --max-n 0)."))
        for option in reversed(opts):
            func = option(func)
        return func

    return decorate(f) if f is not None else decorate


#: The click parameter names `click_options` adds (the fields with a command-line option and no_limits).
def cli_names() -> list[str]:
    return [f.name for f in cli_fields()] + ["no_limits"]


__all__ = ["EXIT_ERROR", "EXIT_OK", "EXIT_PARTIAL", "METRIC_FAMILIES", "NO_LIMITS", "PARTIAL_HELP",
           "SOURCE_FIELDS", "AnalysisOptions", "click_options", "cli_fields", "parse_metrics", "pass_options"]
