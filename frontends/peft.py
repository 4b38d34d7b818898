"""PEFT adapters: a LoRA adapter analysed as the update it is, ΔW = scale · B·A per adapted module.

A source is an adapter when it is a folder holding `adapter_config.json` and `adapter_model.safetensors`
(or `adapter_model.bin`, read with the restricted unpickler unless `--trust`), or a `peft.PeftModel`
object (its active adapter). Each adapted module is one row, named by the base module's path (the
`base_model.model.` prefix PEFT adds is dropped, so `model.layers.0.self_attn.q_proj` is the name the
base checkpoint's weight has), with the columns `r` and `scale` (`WeightLayer.extra`).

The scale is the one PEFT itself applies (`peft.tuners.lora.layer.LoraLayer.update_layer`):
`lora_alpha / r`, or `lora_alpha / sqrt(r)` with `use_rslora`, where a module's r and alpha come from
`rank_pattern` / `alpha_pattern` when a pattern key matches the module path the way PEFT's
`get_pattern_key` matches it (`(.*\\.)?KEY$`). `fan_in_fan_out` (GPT-2's Conv1D) stores ΔW transposed.
Linear: ΔW = s · B A; Embedding: ΔW = s · (B A)^T (`lora_embedding_A/B`); Conv: ΔW[o, i, k...] =
s · sum_r B[o, r] A[r, i, k...] (B is a 1x1 kernel), analysed like any conv as its kernel-position slices.

The ESD of a rank-r matrix (WeightWatcher 0.7.7's `WWPeftLayerIterator`): ΔW has at most r nonzero
singular values, and the ESD is those r eigenvalues only (WeightWatcher takes `num_components = r`
and a truncated SVD of B·A), so num_evals = r (r per slice for a conv) while N and M stay ΔW's shape;
an adapter whose r is under `min_evals` is skipped (WeightWatcher applies min_evals to lora_A's and
lora_B's smaller side, r). The r eigenvalues are computed exactly and cheaply from B and A: with
B = Q_B R_B and A^T = Q_A R_A, s·B·A = Q_B (s R_B R_A^T) Q_A^T, so the r x r core s R_B R_A^T has
ΔW's nonzero singular values; the backend (`--device`) computes them from the core.

Left out, each listed with its reason (`OpenedSource.skipped` and the notes): DoRA
magnitude vectors when there is no base (a per-output rescaling of W + ΔW, which needs W: the row of
a DoRA module then analyses ΔW = scale · B·A, DoRA's low-rank direction update), LoRA biases, full
modules saved with the adapter (`modules_to_save`), and every tensor of PEFT types that are not
low-rank products (IA3's scaling vectors, prompt/prefix tuning's virtual tokens, LoHa, LoKr, AdaLoRA, ...).

`irtools.finetune.open_merged(adapter, base)` is the merged model: every layer of the base, with
W + ΔW in the adapted ones (`merge`; the base named by `base_model_name_or_path` when it is a local
folder, `local_base`); for a DoRA module PEFT's own merged weight W' = m * (W + ΔW) / ||W + ΔW||, the
norm per output unit (`dora_rescale`, as `peft.tuners.lora.variants.DoraLinearVariant.merge_safe`).
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from irtools.errors import IrtoolsError, json_problem, printable
from irtools.frontends.peft_patterns import _PATTERN_KEYS_MAX, _PATTERN_WORK_MAX, CONFIG_FILE, _PatternSet
from irtools.ir.layers import WeightLayer
WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin")
#: What PEFT puts before a module's path in the adapter's keys (PeftModel -> LoraModel -> base model).
PREFIX = "base_model.model."
#: adapter_config.json's size cap: JSON's objects take up to ~17x their bytes in Python (15 MB of '{}' peaked at
#: 405 MiB), and 65,536 pattern keys of 60 characters are 4 MB; real configs are kilobytes.
_CONFIG_MAX_BYTES = 4 << 20
#: Why the tensors of PEFT types other than LoRA are not analysed as matrices.
NOT_LOW_RANK = {
    "IA3": "IA3 learns per-feature scaling vectors, not a low-rank update",
    "PROMPT_TUNING": "prompt tuning learns virtual token embeddings, not a weight update",
    "P_TUNING": "p-tuning learns virtual token embeddings (and their encoder), not a weight update",
    "PREFIX_TUNING": "prefix tuning learns per-layer key/value prefixes, not a weight update",
    "MULTITASK_PROMPT_TUNING": "prompt tuning learns virtual token embeddings, not a weight update",
    "ADAPTION_PROMPT": "adaption prompts are learned prompt tokens and gates, not a weight update",
    "LOHA": "LoHa's update is a Hadamard product of two low-rank products, not B·A (not supported)",
    "LOKR": "LoKr's update is a Kronecker product, not B·A (not supported)",
    "ADALORA": "AdaLoRA's update is P·diag(E)·Q with a pruned rank (not supported)",
}


@dataclass(slots=True)
class LowRankLayer(WeightLayer):
    """A `WeightLayer` of rank at most `rank` per matrix: its ESD has `rank` eigenvalues per matrix
    (WeightWatcher's rule for LoRA updates), so min_evals/max_evals apply to rank x rf."""

    rank: int = 0

    @property
    def num_evals(self) -> int:
        return self.rank * self.rf


@dataclass
class AdapterConfig:
    """The part of `adapter_config.json` (or a `PeftConfig`) that decides what ΔW is."""

    peft_type: str = "LORA"
    r: int = 8
    lora_alpha: float = 8
    use_rslora: bool = False
    fan_in_fan_out: bool = False
    use_dora: bool = False
    rank_pattern: dict = field(default_factory=dict)
    alpha_pattern: dict = field(default_factory=dict)
    base: str | None = None  # base_model_name_or_path
    _patterns: tuple | None = field(default=None, repr=False, compare=False)

    @classmethod
    def from_dict(cls, d: dict, where: str | None = None) -> AdapterConfig:
        if not isinstance(d, dict):
            raise IrtoolsError(f"{CONFIG_FILE} is not a JSON object", where)
        try:
            peft_type, base = d.get("peft_type") or "LORA", d.get("base_model_name_or_path") or None
            if not isinstance(peft_type, str) or not isinstance(base, (str, type(None))):
                raise TypeError("peft_type and base_model_name_or_path must be strings")
            peft_type = printable(peft_type.upper())[:100]  # it is quoted in every skipped tensor's reason
            config = cls(peft_type=peft_type, base=base)
            if peft_type != "LORA":
                return config
            config.r = _positive_int(d.get("r", 8), "r")
            config.lora_alpha = _number(d.get("lora_alpha", 8), "lora_alpha")
            config.use_rslora = _flag(d.get("use_rslora"), "use_rslora")
            config.fan_in_fan_out = _flag(d.get("fan_in_fan_out"), "fan_in_fan_out")
            config.use_dora = _flag(d.get("use_dora"), "use_dora")
            patterns = [d.get("rank_pattern") or {}, d.get("alpha_pattern") or {}]
            if not all(isinstance(p, dict) for p in patterns):
                raise TypeError("rank_pattern and alpha_pattern must be JSON objects")
            if len(patterns[0]) + len(patterns[1]) > _PATTERN_KEYS_MAX:
                raise TypeError(f"rank_pattern and alpha_pattern have {len(patterns[0]) + len(patterns[1]):,} keys "
                                f"(over {_PATTERN_KEYS_MAX:,})")
            config.rank_pattern = {str(k): _positive_int(v, f"rank_pattern['{printable(k)}']")
                                   for k, v in patterns[0].items()}
            config.alpha_pattern = {str(k): _number(v, f"alpha_pattern['{printable(k)}']")
                                    for k, v in patterns[1].items()}
        except (TypeError, AttributeError) as exc:
            raise IrtoolsError(f"{CONFIG_FILE}: {exc}", where) from None
        return config

    def rank_alpha(self, module: str) -> tuple[int, float]:
        """The module's r and lora_alpha: a `rank_pattern`/`alpha_pattern` key that matches, as PEFT's
        `get_pattern_key` matches it (the first key K with `(.*\\.)?K$` matching the module path), in
        bounded time (`_PatternSet`: a key that backtracks exponentially in `re` cannot hang the run)."""
        if self._patterns is None:
            budget = [_PATTERN_WORK_MAX]
            self._patterns = (_PatternSet(self.rank_pattern, budget), _PatternSet(self.alpha_pattern, budget))
        rank_key, alpha_key = (p.first(module) for p in self._patterns)
        return (self.rank_pattern[rank_key] if rank_key is not None else self.r,
                self.alpha_pattern[alpha_key] if alpha_key is not None else self.lora_alpha)

    def scale(self, r: int, alpha: float) -> float:
        """PEFT's scaling: lora_alpha / r, or lora_alpha / sqrt(r) with use_rslora."""
        return alpha / math.sqrt(r) if self.use_rslora else alpha / r


def _positive_int(v, what: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise TypeError(f"{what} must be a positive integer, not {type(v).__name__} {v!r}"[:200])
    return v


def _flag(v, what: str) -> bool:
    if v is None or isinstance(v, bool):  # a JSON "false" is a true string: refused, not read as on
        return bool(v)
    raise TypeError(f"{what} must be true or false, not {type(v).__name__}")


def _number(v, what: str) -> float:
    """A finite float; a JSON integer past float's range (`1e309` written out in digits: math.isfinite and
    float() raised OverflowError, an unexpected error) is refused like an infinity."""
    try:
        finite = not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v)
    except OverflowError:
        raise TypeError(f"{what} must be a finite number, not an integer of {len(str(abs(v)))} digits (past a "
                        "float's range)"[:200]) from None
    if not finite:
        raise TypeError(f"{what} must be a finite number, not {type(v).__name__}"[:200])
    return float(v)


# -- recognising and reading -----------------------------------------------------------------------

def _is_peft_model(source: Any) -> bool:
    return any(c.__name__ in ("PeftModel", "PeftMixedModel") and c.__module__.startswith("peft")
               for c in type(source).__mro__)


def adapter_folder(source: Any) -> str | None:
    """The folder of an adapter source (a folder with adapter_config.json and adapter weights, or
    the adapter_config.json file itself), else None. Cheap: looks at names only."""
    if not isinstance(source, (str, os.PathLike)):
        return None
    path = os.fspath(source)
    if os.path.basename(path) == CONFIG_FILE and os.path.isfile(path):
        path = os.path.dirname(path) or "."
    if not os.path.isdir(path) or not os.path.isfile(os.path.join(path, CONFIG_FILE)):
        return None
    return path if any(os.path.isfile(os.path.join(path, f)) for f in WEIGHT_FILES) else None


def is_adapter(source: Any) -> bool:
    """The source table's test: an adapter folder or a PeftModel (by class name: imports nothing)."""
    return adapter_folder(source) is not None or _is_peft_model(source)


def read_config(folder: str) -> AdapterConfig:
    from irtools.files import model_member

    path = model_member(folder, CONFIG_FILE, "adapter config")  # inside the folder, a regular file
    if os.path.getsize(path) > _CONFIG_MAX_BYTES:
        raise IrtoolsError(f"{CONFIG_FILE} is over {_CONFIG_MAX_BYTES >> 20} MB", path)
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (ValueError, RecursionError) as exc:  # ValueError: not UTF-8, not JSON, a 5,000-digit number
        raise IrtoolsError(f"not valid JSON ({json_problem(exc)})", path) from None
    return AdapterConfig.from_dict(data, path)


def read_adapter(source: Any, trust: bool = False) -> tuple[AdapterConfig, dict, str]:
    """(config, {key: StoredArray}, label) of an adapter folder or a PeftModel's active adapter."""
    from irtools.frontends.weights_file import StoredArray, read_weights

    folder = adapter_folder(source)
    if folder is not None:
        config = read_config(folder)
        from irtools.files import model_member

        weights = next(model_member(folder, f, "adapter weights") for f in WEIGHT_FILES
                       if os.path.lexists(os.path.join(folder, f)))
        if config.base and not os.path.isabs(config.base) and os.path.isdir(os.path.join(folder, config.base)):
            config.base = os.path.join(folder, config.base)
        return config, read_weights(weights, trust=trust), folder
    import torch
    from peft.utils import get_peft_model_state_dict

    adapter = getattr(source, "active_adapter", "default")
    adapter = adapter[0] if isinstance(adapter, (list, tuple)) else adapter
    peft_config = source.peft_config[adapter]
    d = peft_config.to_dict()
    d["peft_type"] = str(getattr(peft_config.peft_type, "value", peft_config.peft_type))
    config = AdapterConfig.from_dict(d)
    state = get_peft_model_state_dict(source, adapter_name=adapter)

    def stored(t):
        def load(t=t):
            t = t.detach().cpu()
            return (t if t.dtype in (torch.float32, torch.float64) else t.float()).numpy()
        dtype = np.float64 if t.dtype == torch.float64 else np.float32
        return StoredArray(tuple(t.shape), np.dtype(dtype), load)

    return config, {k: stored(v) for k, v in state.items() if v.is_floating_point()}, type(source).__name__


# -- the updates ---------------------------------------------------------------------------------------

_PART = re.compile(r"^(?P<module>.+?)\.(?P<part>lora_A|lora_B|lora_embedding_A|lora_embedding_B|"
                   r"lora_magnitude_vector)(?:\.[^.]+)*?(?:\.(?P<what>weight|bias))?$")
_PARTS = frozenset(("lora_A", "lora_B", "lora_embedding_A", "lora_embedding_B", "lora_magnitude_vector"))


def _part(key: str) -> dict | None:
    """`_PART.match(key)`'s groups (module, part, what) in one pass over the key's dot segments: the
    regex backtracks quadratically on a name of many '.lora_A' segments ending in '.' (a 112 KB tensor
    name took 42 s). The module is the shortest prefix followed by a part segment after which every
    segment is non-empty; a name with a newline (which the regex's module never holds) is no part."""
    if "\n" in key:
        return None
    segs = key.split(".")
    last_empty = max((j for j, seg in enumerate(segs) if not seg), default=0)
    for i in range(max(1, last_empty + 1), len(segs)):
        if segs[i] in _PARTS and (i > 1 or segs[0]):
            rest = segs[i + 1:]
            return {"module": ".".join(segs[:i]), "part": segs[i],
                    "what": rest[-1] if rest and rest[-1] in ("weight", "bias") else None}
    return None


@dataclass
class Update:
    """One adapted module's LoRA update ΔW = scale · B·A."""

    module: str  # the base module's path
    kind: str  # linear | embedding | conv
    A: Any  # StoredArray
    B: Any
    r: int
    alpha: float
    scale: float
    fan_in_fan_out: bool
    keys: tuple[str, str]
    #: DoRA's magnitude vector (a StoredArray, one length per output unit), attached only on the merged
    #: route (`adapter_updates(..., merged=True)`): W' = m * (W + ΔW) / ||W + ΔW|| per output unit.
    magnitude: Any = None
    magnitude_key: str | None = None
    #: the r adapter_config.json gives the module, where its tensors store another rank (None: they agree)
    config_r: int | None = None
    #: set by `merge`: the base has a layer of this name whose weight ΔW does not fit
    misfit: bool = False

    @property
    def out_axis(self) -> int:
        """The axis of ΔW (as `delta_matrices` gives its matrices) that indexes the module's outputs,
        the axis DoRA's magnitude runs along: 0 for Linear (out, in) and conv slices, 1 for an
        Embedding (num_embeddings, dim) and for `fan_in_fan_out` (in, out), as PEFT's
        `DoraLinearLayer.get_weight_norm` / `DoraEmbeddingLayer` transpose them."""
        return 1 if self.kind == "embedding" or self.fan_in_fan_out else 0

    @property
    def shape(self) -> tuple[int, ...]:
        """ΔW's shape as the base module stores its weight."""
        a, b = self.A.shape, self.B.shape
        if self.kind == "embedding":
            return (a[1], b[0])
        if self.kind == "conv":
            return (b[0], a[1], *a[2:])
        return (a[1], b[0]) if self.fan_in_fan_out else (b[0], a[1])

    def factors(self) -> tuple[np.ndarray, np.ndarray]:
        """(B, A) as float64 2-D matrices with ΔW = scale · B @ A (conv: A of one kernel position is
        A[:, :, pos]; here A keeps its kernel dims)."""
        a = np.asarray(self.A.load(), dtype=np.float64)
        b = np.asarray(self.B.load(), dtype=np.float64)
        if self.kind == "conv":
            return b.reshape(b.shape[0], b.shape[1]), a
        return b, a

    def delta(self) -> np.ndarray:
        """ΔW in full (the base weight's layout), float64 (NaN/Inf factors: a non-finite ΔW, which the
        spectral pass reports as its finding, without numpy's warnings)."""
        b, a = self.factors()
        with np.errstate(over="ignore", invalid="ignore"):
            if self.kind == "conv":
                return self.scale * np.einsum("or,ri...->oi...", b, a)
            d = self.scale * (b @ a)
        return d.T if self.kind == "embedding" or self.fan_in_fan_out else d

    def delta_matrices(self) -> list[np.ndarray]:
        """ΔW as the matrices irtools analyses: one (out, in) matrix, or a conv's kernel-position
        slices in row-major order (as `weights_file.weight_layers` slices a conv)."""
        d = self.delta()
        if self.kind != "conv":
            return [d]
        return [d[(slice(None), slice(None), *pos)] for pos in np.ndindex(*d.shape[2:])]

    def cores(self) -> list[np.ndarray]:
        """Small matrices with exactly ΔW's nonzero singular values (one per kernel position)."""
        b, a = self.factors()
        if not (np.isfinite(a).all() and np.isfinite(b).all()):  # QR of NaN/Inf: LAPACK warns or fails
            shape = (min(b.shape[0], b.shape[1]), min(a.shape[0], a.shape[1]))  # the cores' shape below
            return [np.full(shape, np.nan) for _ in np.ndindex(*a.shape[2:])]
        rb = np.linalg.qr(b, mode="r")
        with np.errstate(over="ignore", invalid="ignore"):  # a scale of 1e308 overflows: the non-finite finding
            if self.kind != "conv":
                return [self.scale * rb @ np.linalg.qr(a.T, mode="r").T]
            return [self.scale * rb @ np.linalg.qr(a[(slice(None), slice(None), *pos)].T, mode="r").T
                    for pos in np.ndindex(*a.shape[2:])]

    def layer(self) -> LowRankLayer:
        shape = self.shape
        out, inp = shape[0], shape[1]
        rf = int(np.prod(shape[2:])) if self.kind == "conv" else 1
        rank = min(self.r, out, inp)
        layer_type = "embedding" if self.kind == "embedding" else f"conv{len(shape) - 2}d" if self.kind == "conv" \
            else "dense"
        return LowRankLayer(self.module, self.module, "LoRA", layer_type, self.keys[0], shape, max(out, inp),
                            min(out, inp), rf, 0.5 if self.kind == "conv" else 1.0, loader=self.cores,
                            sources=self.keys, extra={"r": self.r, "scale": self.scale}, rank=rank)


def module_path(key: str) -> str:
    return key.removeprefix(PREFIX)


#: Why a DoRA magnitude vector is not analysed when there is no base to merge into.
DORA_UNMERGED = ("DoRA magnitude vector: it rescales each output of W + ΔW to its own length, which needs the "
                 "base weight W (give --base BASE to analyse the merged DoRA weight); the row of this module "
                 "analyses ΔW = scale · B·A, DoRA's low-rank direction update before that rescaling")


def adapter_updates(config: AdapterConfig, tensors: dict, merged: bool = False) -> tuple[list[Update], list[dict]]:
    """The adapter's LoRA updates, and every other tensor as a skipped entry with its reason. With
    `merged` (the adapter is merged into a base), a DoRA magnitude vector is attached to its module's
    update (`Update.magnitude`) instead of being skipped."""
    skipped: list[dict] = []
    magnitudes: dict[str, str] = {}

    def skip(key: str, reason: str) -> None:
        skipped.append({"name": module_path(key), "node": key, "op_type": "LoRA", "parameter": key,
                        "reason": reason})

    if config.peft_type != "LORA":
        reason = NOT_LOW_RANK.get(config.peft_type, f"PEFT type {config.peft_type} is not a low-rank update "
                                                    f"(only LORA adapters are analysed)")
        for key in tensors:
            skip(key, reason)
        return [], skipped
    parts: dict[str, dict[str, str]] = {}
    for key in tensors:
        m = _part(key)
        if m is None:
            skip(key, "a module saved whole with the adapter (modules_to_save or trainable tokens), not a "
                      "low-rank update")
        elif m["part"] == "lora_magnitude_vector":
            if merged:
                magnitudes[module_path(m["module"])] = key
            else:
                skip(key, DORA_UNMERGED)
        elif m["what"] == "bias":
            skip(key, "LoRA bias (lora_bias=True): a vector, not a matrix")
        else:
            found = parts.setdefault(module_path(m["module"]), {})
            if m["part"] in found:  # two tensors for one factor (two adapters' keys, a hand-made file): which one?
                found.setdefault("duplicate", key)
            else:
                found[m["part"]] = key
    updates = []
    for module, found in parts.items():
        if "duplicate" in found:
            for key in found.values():
                skip(key, f"two {_part(found['duplicate'])['part']} tensors for one module "
                          f"('{printable(found['duplicate'])[:100]}' and another): which update it is is ambiguous")
            continue
        a_key = found.get("lora_A") or found.get("lora_embedding_A")
        b_key = found.get("lora_B") or found.get("lora_embedding_B")
        if a_key is None or b_key is None:
            for key in found.values():
                skip(key, "lora_A without lora_B (or the reverse): no update B·A")
            continue
        A, B = tensors[a_key], tensors[b_key]
        kind = "embedding" if "lora_embedding_A" in found else "conv" if len(A.shape) >= 3 else "linear"
        r, alpha = config.rank_alpha(module)
        ok = (len(A.shape) == len(B.shape) and A.shape[0] == B.shape[1]) if kind != "embedding" else \
            (len(A.shape) == len(B.shape) == 2 and A.shape[0] == B.shape[1])
        if kind == "conv":
            ok = ok and all(k == 1 for k in B.shape[2:])
        if not ok or A.shape[0] == 0:
            for key in (a_key, b_key):
                skip(key, f"lora_A {tuple(A.shape)} and lora_B {tuple(B.shape)} do not multiply to an update"
                     + (" (rank 0)" if ok else ""))
            continue
        config_r = None
        if A.shape[0] != r:  # the stored rank wins (a note says so); PEFT itself would refuse to load it
            config_r, r = r, int(A.shape[0])
        update = Update(module, kind, A, B, r, alpha, config.scale(r, alpha),
                        config.fan_in_fan_out and kind == "linear", (a_key, b_key), config_r=config_r)
        m_key = magnitudes.pop(module, None)
        if m_key is not None:
            mag, out = tensors[m_key], update.shape[update.out_axis]
            # one value per output, along one axis (PEFT's (out,), a conv's (1, out, 1, 1)); (6, 8) for 48 outputs
            # is no vector. W + ΔW without its rescaling is not the DoRA weight: no row
            if math.prod(mag.shape) != out or sum(1 for n in mag.shape if n != 1) > 1:
                for key in (a_key, b_key, m_key):
                    skip(key, f"DoRA magnitude vector of {math.prod(mag.shape)} values for {out} outputs of ΔW "
                              f"{update.shape}{'' if math.prod(mag.shape) != out else f' in shape {tuple(mag.shape)}'}"
                              f": the module cannot be merged"[:300])
                continue
            update.magnitude, update.magnitude_key = mag, m_key
        updates.append(update)
    for key in magnitudes.values():
        skip(key, "DoRA magnitude vector without its module's lora_A and lora_B: nothing to rescale")
    return updates, skipped


def _notes(config: AdapterConfig, updates: list[Update], skipped: list[dict]) -> list[str]:
    notes = []
    if updates:
        ranks = sorted({u.r for u in updates})
        notes.append(f"PEFT LoRA adapter: {len(updates)} adapted module(s), r = {', '.join(map(str, ranks))}; each "
                     f"row analyses ΔW = scale · B·A (scale = lora_alpha / {'sqrt(r)' if config.use_rslora else 'r'}), "
                     f"whose ESD is its r nonzero eigenvalues")
    disagree = [u for u in updates if u.config_r is not None]
    if disagree:
        u = disagree[0]
        notes.append(f"{len(disagree)} adapted module(s) store another rank than adapter_config.json gives (e.g. "
                     f"'{printable(u.module)}': r = {u.r} stored, {u.config_r} in the config; PEFT would refuse to "
                     f"load it): analysed at the stored rank, scale from it")
    if config.use_dora:
        notes.append("DoRA adapter without a base: each row analyses ΔW = scale · B·A, the low-rank direction "
                     "update, not DoRA's rescaled weight; the magnitude vectors are skipped (with --base BASE "
                     "the merged weight m * (W + ΔW) / ||W + ΔW|| is analysed)")
    if skipped:
        notes.append(f"{len(skipped)} adapter tensor(s) not analysed (see skipped)")
    return notes


def open_adapter(source: Any, name: str, options) -> Any:
    """The source table's `open`: one `LowRankLayer` per adapted module (ΔW), the rest skipped."""
    from irtools.frontends import OpenedSource

    config, tensors, _ = read_adapter(source, trust=getattr(options, "trust", False))
    updates, skipped = adapter_updates(config, tensors)
    metadata = {"format": "peft", "peft_type": config.peft_type, "adapted_modules": len(updates),
                "ranks": sorted({u.r for u in updates})}
    if config.base:
        metadata["base"] = config.base
    return OpenedSource(name, "peft", layers=[u.layer() for u in updates], metadata=metadata,
                        notes=_notes(config, updates, skipped), skipped=skipped)


# -- merged: the base with W + ΔW ----------------------------------------------------------------------

def local_base(source: Any, base: Any = None, trust: bool = False) -> Any:
    """The base to merge into: `base` if given, else the adapter config's base_model_name_or_path when
    it is a local folder or file; else a one-line error.

    An adapter folder's config is a file's word, so its path is followed only where it resolves
    (symlinks followed, read as PEFT reads it: from the working directory) inside the folder that holds
    the adapter folder: a sibling (`runs/base` beside `runs/adapter`) or a folder inside the adapter.
    Anywhere else (`/etc`, `../../other`, a symlink out) is a one-line error asking for the base:
    before, any existing path a config named was opened as the model. A PeftModel's config (an object
    the caller built from its base) is followed as before."""
    if base is not None:
        return base
    config, _, where = read_adapter(source, trust)
    folder = adapter_folder(source)
    if config.base and os.path.exists(config.base):
        if folder is None:
            return config.base
        parent = os.path.dirname(os.path.realpath(folder))
        real = os.path.realpath(config.base)
        if os.path.commonpath([real, parent]) == parent and parent != os.path.dirname(parent):
            return config.base
        raise IrtoolsError(f"base_model_name_or_path '{printable(config.base)[:200]}' resolves outside the folder "
                           "that holds the adapter (not followed: give the base, --base BASE)",
                           where if isinstance(where, str) else None)
    raise IrtoolsError("no base to merge the adapter into: give one (--base BASE); "
                       + (f"base_model_name_or_path {config.base!r} is not a local folder"[:200] if config.base else
                          "adapter_config.json names none"), where if isinstance(where, str) else None)


def add_aligned(w: np.ndarray, d: np.ndarray, what: str) -> np.ndarray:
    """w + d, d transposed when that is what lines it up (WeightWatcher's rule for mismatched layouts)."""
    with np.errstate(over="ignore", invalid="ignore"):  # inf + -inf: NaN, the spectral pass's finding
        if w.shape == d.shape:
            return np.asarray(w, dtype=np.float64) + d
        if w.shape == d.T.shape:
            return np.asarray(w, dtype=np.float64) + d.T
    raise IrtoolsError(f"{what}: the adapter's ΔW {d.shape} does not fit the base weight {w.shape}"[:300])


def dora_rescale(mats: list[np.ndarray], deltas: list[np.ndarray], magnitude: np.ndarray, out_axis: int,
                 what: str = "") -> list[np.ndarray]:
    """DoRA's merged weight (PEFT's `DoraLinearVariant.merge_safe` and its Embedding and Conv variants):
    W' = m * (W + ΔW) / ||W + ΔW||, the norm taken per output unit over every other axis (the input
    axis and, for a conv, every kernel position: all of `mats` together), m and the norm broadcast along
    the outputs. `mats` are the base's matrices, `deltas` ΔW's (output axis `out_axis` in ΔW's layout;
    a base matrix stored transposed is lined up and given back in its own layout). PEFT adds no eps:
    an output whose W + ΔW is all zeros divides by zero as it does there."""
    merged, axes = [], []
    for w, d in zip(mats, deltas):
        transposed = w.shape != d.shape and w.shape == d.T.shape
        merged.append(add_aligned(w, d, what))
        axes.append(1 - out_axis if transposed else out_axis)
    m = np.asarray(magnitude, dtype=np.float64).ravel()
    norm2 = np.zeros(m.shape)
    for v, ax in zip(merged, axes):
        if v.shape[ax] != m.size:
            raise IrtoolsError(f"{what}: DoRA magnitude of {m.size} values for {v.shape[ax]} outputs"[:300])
        with np.errstate(over="ignore", invalid="ignore"):
            norm2 += np.einsum("ij,ij->i" if ax == 0 else "ij,ij->j", v, v)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):  # NaN/Inf: the spectral pass's finding
        factor = m / np.sqrt(norm2)
        for v, ax in zip(merged, axes):
            v *= factor[:, None] if ax == 0 else factor[None, :]
    return merged


def merged_layer(layer: WeightLayer, update: Update) -> WeightLayer:
    """The base layer with W + ΔW (matrix by matrix), keeping its name; columns r and scale. A DoRA
    update with its magnitude (`Update.magnitude`) gives m * (W + ΔW) / ||W + ΔW|| (`dora_rescale`)
    and the column `dora` = True."""

    def load(layer=layer, update=update) -> list[np.ndarray]:
        mats, deltas = layer.matrices(), update.delta_matrices()
        if len(mats) != len(deltas):
            raise IrtoolsError(f"{layer.name}: the adapter's ΔW has {len(deltas)} matrices, the base layer "
                               f"{len(mats)}")
        if update.magnitude is not None:
            return dora_rescale(mats, deltas, update.magnitude.load(), update.out_axis, layer.name)
        return [add_aligned(w, d, layer.name) for w, d in zip(mats, deltas)]

    extra = {**layer.extra, "r": update.r, "scale": update.scale}
    if update.magnitude is not None:
        extra["dora"] = True
    return replace(layer, loader=load, extra=extra)


def merge(updates: list[Update], base_layers: list[WeightLayer]) -> tuple[list[WeightLayer], list[Update]]:
    """The base's layers with W + ΔW where an update adapts them (matched by the layer name, the module
    path), and the updates no base layer matched."""
    by_module = {u.module: u for u in updates}
    layers, misfits = [], []
    for layer in base_layers:
        update = by_module.pop(layer.name, None)
        if update is not None and not _fits(update, layer):  # another hidden size: known from the shapes
            misfits.append(update)
            update = None
        layers.append(layer if update is None else merged_layer(layer, update))
    for update in misfits:
        update.misfit = True
    return layers, list(by_module.values()) + misfits


def _fits(update: Update, layer: WeightLayer) -> bool:
    """Whether ΔW can line up with the base layer's matrices (`add_aligned` checks each when loaded):
    the same N, M and number of matrices (a base's layout, a Keras kernel, may order the axes its way)."""
    d = update.layer()
    return (d.N, d.M, d.rf) == (layer.N, layer.M, layer.rf)


def unmatched_entries(updates: list[Update]) -> list[dict]:
    return [{"name": u.module, "node": u.module, "op_type": "LoRA", "parameter": u.keys[0],
             "reason": f"the adapter's ΔW {tuple(u.shape)} does not fit the base layer of that name (another "
                       f"hidden size: an adapter of another base)" if getattr(u, "misfit", False) else
                       "adapted module not found in the base (no base layer of that name)"} for u in updates]


__all__ = ["AdapterConfig", "LowRankLayer", "Update", "adapter_updates", "dora_rescale", "is_adapter", "local_base",
           "merge", "merged_layer", "open_adapter", "read_adapter", "unmatched_entries"]
