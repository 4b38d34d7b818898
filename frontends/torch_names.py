"""One name per matrix whatever the route: the checkpoint's (the PyTorch frontend's naming rule).

The rule (every route): a row is named by the tensor a user finds in the checkpoint, the weights-only
route's name. transformers (5.x) loads some checkpoints into other names and layouts than it stores them
(its conversion mapping: Mixtral's `block_sparse_moe.experts.3.w1` / `.w3` / `.w2`, Qwen2-MoE's
`mlp.experts.3.gate_proj` ... are one fused `mlp.experts.gate_up_proj` [E, 2I, H] and `down_proj` in the
module), and `save_pretrained` converts them back. So the module route (a model object, a checkpoint
folder's architecture) renames the rows of those parameters to the stored tensors' names, pairing each
row with the stored matrix equal to it value for value: `mlp.experts.gate_up_proj[3].gate` is
`block_sparse_moe.experts.3.w1` on every route. A checkpoint stored fused (gpt-oss) keeps
`experts.gate_up_proj[3].gate`, its stored name. Parameters stored as they are keep their module path.

Used by `irtools.frontends.torch` (which re-exports these names) and the checkpoint-folder source; torch and
transformers are imported only when a function here is called.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Mapping

import numpy as np


def _torch():
    from irtools.frontends.torch import _torch as torch  # noqa: PLC0415  (the frontend's one way to import torch)

    return torch()


def _reverse_conversion():
    """transformers' `revert_weight_conversion` (what `save_pretrained` applies), or None before 5.x."""
    tf = sys.modules.get("transformers")
    if tf is None:
        return None
    try:
        from transformers.core_model_loading import revert_weight_conversion  # noqa: PLC0415
    except ImportError:
        return None
    return revert_weight_conversion


def converted_parameters(module) -> list[str]:
    """The parameters of a transformers model that `save_pretrained` writes under other names or in another
    layout (its reverse conversion run on shapes only, the meta device); [] for any other module."""
    return list(_saved_shapes(module)[0])


def _saved_shapes(module) -> tuple[list[str], dict[str, tuple]]:
    """(`converted_parameters`, {name: shape} of every tensor `save_pretrained` writes), from one reverse
    conversion of the whole state on the meta device; ([], {}) for a module of no conversion."""
    tf = sys.modules.get("transformers")
    revert = _reverse_conversion()
    if revert is None or not isinstance(module, tf.PreTrainedModel):
        return [], {}
    torch = _torch()
    params = dict(module.named_parameters())
    meta = {k: torch.empty(p.shape, dtype=p.dtype, device="meta") for k, p in params.items()}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            saved = revert(module, dict(meta))
    except Exception:  # noqa: BLE001  (a conversion its own code cannot reverse: the module's names stay)
        return [], {}
    converted = [k for k in params if k not in saved or tuple(saved[k].shape) != tuple(meta[k].shape)]
    return converted, {k: tuple(t.shape) for k, t in saved.items()}


class _StoredRow:
    """A stored tensor's row reduced to what `checkpoint_named` pairs by: its name, tensor, shape and
    matrices' key (the values themselves not kept)."""

    def __init__(self, layer):
        self.name, self.parameter, self.weight_shape = layer.name, layer.parameter, layer.weight_shape
        self.key = _matrix_key(layer)


def saved_layers(module) -> dict[str, list]:
    """{parameter: the weights-only route's rows (`_StoredRow`) of the tensors `save_pretrained` writes for
    it} for each parameter a transformers model stores in another name or layout (`converted_parameters`);
    one parameter's converted copy held at a time."""
    from irtools.frontends.formats.common import StoredArray  # noqa: PLC0415
    from irtools.frontends.formats.layers import weight_layers  # noqa: PLC0415

    converted, shapes = _saved_shapes(module)
    if not converted:
        return {}
    revert, torch = _reverse_conversion(), _torch()
    params = dict(module.named_parameters())
    out = {}
    for k in converted:
        try:
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                saved = revert(module, {k: params[k].detach()})
        except Exception:  # noqa: BLE001  (reversed only with other parameters: its rows keep the module's names)
            continue
        if any(shapes.get(name) != tuple(t.shape) for name, t in saved.items()):
            continue  # one part of a tensor saved from several parameters (q, k, v into one qkv): names stay
        tensors = {}
        for name, t in saved.items():
            a = t.detach().cpu()
            a = (a.float() if a.dtype == torch.bfloat16 else a).numpy()
            tensors[name] = StoredArray(tuple(a.shape), a.dtype, (lambda a=a: a))
        model_type = getattr(getattr(module, "config", None), "model_type", None)
        out[k] = [_StoredRow(row) for row in weight_layers(tensors, model_type=model_type)]
    return out


def checkpoint_renames(module) -> dict[str, list]:
    """{module route row name: [checkpoint row name, its tensor, its shape]} of a transformers model's rows
    stored under other names (`CHECKPOINT_NAMES_KEY`'s value, which the graph route applies); {} for a module
    stored as it is."""
    saved = saved_layers(module)
    if not saved:
        return {}
    from irtools.frontends.torch import module_weight_layers  # noqa: PLC0415  (it calls this module back)

    before = module_weight_layers(module)
    after = checkpoint_named(before, saved)
    return {old.name: [new.name, new.parameter, list(new.weight_shape)]
            for old, new in zip(before, after, strict=True) if old.name != new.name}


def _matrix_key(layer) -> tuple:
    """A row's matrices by value (a transposed copy the same key): shapes and digests."""
    import hashlib  # noqa: PLC0415

    key = []
    for m in layer.matrices():
        m = np.asarray(m, dtype=np.float64)
        digests = sorted(hashlib.sha1(np.ascontiguousarray(x).tobytes()).hexdigest() for x in (m, m.T))
        key.append((tuple(sorted(m.shape)), digests[0]))
    return tuple(key)


def checkpoint_named(layers: list, saved: Mapping[str, list]) -> list:
    """`layers` with the rows of each parameter in `saved` ({parameter: the stored tensors' rows}; parameters
    given the same list draw from it together) renamed to the stored row of the same matrix (name, parameter
    and shape: the checkpoint's tensor); rows no stored matrix equals keep their names."""
    if not saved:
        return layers
    from dataclasses import replace  # noqa: PLC0415

    index: dict[str, dict[tuple, list]] = {}
    built: dict[int, dict[tuple, list]] = {}  # parameters given one list of rows share its index (each row once)
    for k, rows in saved.items():
        if id(rows) not in built:
            built[id(rows)] = {}
            for row in rows:
                key = row.key if isinstance(row, _StoredRow) else _matrix_key(row)
                built[id(rows)].setdefault(key, []).append(row)
        index[k] = built[id(rows)]
    out = []
    taken = {layer.name for layer in layers if layer.parameter not in index}
    for layer in layers:
        found = index[layer.parameter].get(_matrix_key(layer)) if layer.parameter in index else None
        if found and found[0].name not in taken:  # never two rows of one name
            taken.add(found[0].name)
            row = found.pop(0)
            layer = replace(layer, name=row.name, parameter=row.parameter, sources=(row.parameter,),
                            weight_shape=row.weight_shape, shared_with=list(layer.shared_with))
        out.append(layer)
    return out
