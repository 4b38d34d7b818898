"""Quantized checkpoint layouts into float tensors, recognised from the tensors and config.json.

Safetensors checkpoints store a quantized weight as several tensors: the packed codes and the
scales (and zero points, a quantization state) beside them. Each recogniser below finds its
format's groups by name and dtype, checks that the members' shapes fit each other, and
replaces the group by one float `StoredArray` under the weight's name whose `load()`
dequantizes (the arithmetic is in `irtools.ir.quant`, reproducing the defining code's) and
whose `storage` names the format; the other members are recorded in `WeightSet.auxiliary`. A
group whose members do not fit is a `skipped` entry with the reason, never dropped.

| format | recognised by | dequantized as |
| --- | --- | --- |
| FP8 (F8_E4M3/F8_E5M2) | a float8 weight with `weight_scale_inv` / `weight_scale` (or `<name>_scale_inv`) | q x scale per tensor, row or block |
| MXFP4 (gpt-oss) | `<name>_blocks` uint8 (..., G, 16) + `<name>_scales` uint8 (..., G) | E2M1 code x 2^(e-127) |
| bitsandbytes NF4/FP4 | `<weight>.quant_state.bitsandbytes__nf4/fp4` + `absmax`, `quant_map` (+ nested) | code x absmax per block |
| bitsandbytes int8 | an int8 weight + `SCB` | q x SCB / 127 per row |
| GPTQ | `qweight` int32 (in/8, out) + `qzeros`, `scales`, `g_idx` | scales[g] x (q - (z+1)[g]) |
| AWQ | `qweight` int32 (in, out/8) + `qzeros`, `scales` | (q - z) x s per group, AWQ order |
| MLX affine | a uint32 `weight` + `scales` + `biases`, bits/group from config.json | scales x q + biases |
| compressed-tensors pack-quantized | `weight_packed` int32 + `weight_scale` (+ `weight_zero_point`, `weight_g_idx`, `weight_shape`) | (q - z) x s per group |
"""

from __future__ import annotations

import json
import math
import os

import ml_dtypes
import numpy as np

from irtools import budget
from irtools.errors import ModelLoadError, printable
from irtools.files import model_member
from irtools.ir import quant

from .common import StoredArray, WeightSet

_F8 = (np.dtype(ml_dtypes.float8_e4m3fn), np.dtype(ml_dtypes.float8_e5m2))
_F8_NAMES = {np.dtype(ml_dtypes.float8_e4m3fn): "F8_E4M3", np.dtype(ml_dtypes.float8_e5m2): "F8_E5M2"}
_CONFIG_MAX = 10 << 20


def read_config(path: str) -> dict:
    """The quantization facts of the checkpoint's folder: config.json's `quantization_config`
    (transformers) and `quantization` (MLX), or quantize_config.json (AutoGPTQ). {} without.

    Each file is one of the folder's own (`model_member`): a symlink out of the folder, a FIFO or a
    hard link is refused with one line naming it (before, the symlink's target was read, and what
    it said decided how the weights were dequantized)."""
    folder = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
    out: dict = {}
    for name, key in (("config.json", "quantization_config"), ("config.json", "quantization"),
                      ("quantize_config.json", None), ("quant_config.json", None)):
        if not os.path.lexists(os.path.join(folder, name)):
            continue
        full = model_member(path, name, "quantization config", ModelLoadError)
        try:
            if os.path.getsize(full) > _CONFIG_MAX:
                continue
            with open(full, encoding="utf-8") as fh:
                data = json.load(fh)
        except (OSError, ValueError, RecursionError):
            continue
        part = data.get(key) if key and isinstance(data, dict) else data
        if isinstance(part, dict):
            if key == "quantization":
                out.setdefault("mlx", part)
            else:
                for k, v in part.items():
                    out.setdefault(k, v)
    return out


def dequantized(tensors: WeightSet, path: str) -> WeightSet:
    """`tensors` with every recognised quantized group replaced by its float tensor."""
    config = read_config(path) if _has_candidates(tensors) else {}
    groups: dict[str, tuple[StoredArray, list[str]]] = {}  # weight name -> (float array, members)
    for recognise in (_gptq_awq, _pack_quantized, _bnb_4bit, _bnb_int8, _mxfp4, _mlx, _fp8):
        taken = {m for _, members in groups.values() for m in members}
        for name, (array, members) in recognise(tensors, config, taken, path).items():
            groups[name] = (array, members)
    if not groups:
        return tensors
    member_of = {m: name for name, (_, members) in groups.items() for m in members}
    out = WeightSet().take(tensors)
    for name, t in tensors.items():
        owner = member_of.get(name)
        if owner is None:
            out[name] = t
            continue
        array = groups[owner][0]
        if name == groups[owner][1][0]:  # the group's place: its first member's
            if isinstance(array, str):
                out.skipped.append({"name": owner, "node": owner, "op_type": "state_dict", "parameter": owner,
                                    "reason": array})
            else:
                out[owner] = array
        if name != owner or isinstance(array, str):
            out.auxiliary[name] = owner
    counts: dict[str, int] = {}
    for array, _ in groups.values():
        if not isinstance(array, str):
            kind = array.storage.split(" block")[0].split(" group")[0].split(" per-")[0]
            counts[kind] = counts.get(kind, 0) + 1
    if counts:
        out.metadata["quantization"] = dict(sorted(counts.items()))
        out.notes.append("quantized weights dequantized to float: " + ", ".join(f"{n} {k}" for k, n in
                                                                                 sorted(counts.items())))
    return out


def _has_candidates(tensors) -> bool:
    return any(np.dtype(t.dtype) in _F8 or np.dtype(t.dtype).kind in "iu" for t in tensors.values())


def _base(name: str, suffix: str) -> str | None:
    return name[: -len(suffix)] if name.endswith(suffix) else None


def _fit(cond: bool, message: str) -> None:
    if not cond:
        raise _Mismatch(message)


class _Mismatch(Exception):
    pass


def _group(tensors, name: str, members: list[str], build, path: str):
    """The float StoredArray `build` makes of a group, or the reason it cannot (a string). A member with a
    zero dimension holds no matrix (and the formats' group and block sizes, derived from the dims, would divide
    by zero); arithmetic on sizes the file made up is that group's reason, not the whole checkpoint's error."""
    try:
        return build()
    except _Mismatch as exc:
        return f"{exc} (not dequantized)"
    except (ZeroDivisionError, OverflowError, ValueError, IndexError) as exc:
        empty = next((m for m in members if m in tensors and 0 in tuple(tensors[m].shape)), None)
        if empty is not None:
            return f"'{printable(empty)}' {list(tensors[empty].shape)} has a zero dimension (not dequantized)"
        return f"sizes that do not fit the format ({type(exc).__name__}: {printable(exc)}) (not dequantized)"


def _lazy(shape, dtype, storage: str, fn, what: str, path: str) -> StoredArray:
    budget.check_shape(shape, 4, what, path)
    return StoredArray(tuple(int(d) for d in shape), np.dtype(dtype), fn, storage)


# -- FP8 -----------------------------------------------------------------------------------------
def _fp8(tensors, config, taken, path):
    block_cfg = config.get("weight_block_size")
    block_cfg = tuple(block_cfg) if isinstance(block_cfg, list) and len(block_cfg) == 2 and \
        all(type(b) is int and b > 0 for b in block_cfg) else None
    out = {}
    for name, t in tensors.items():
        if name in taken or np.dtype(t.dtype) not in _F8 or len(t.shape) < 2:
            continue
        stem = _base(name, ".weight")
        candidates = ([f"{stem}.weight_scale_inv", f"{stem}.weight_scale"] if stem is not None else []) + \
            [f"{name}_scale_inv", f"{name}_scale"]
        scale_name = next((c for c in candidates if c in tensors and c not in taken), None)
        if scale_name is None:
            continue
        s = tensors[scale_name]

        def build(t=t, s=s, name=name, scale_name=scale_name):
            rows, cols = t.shape[-2:]
            grid = s.shape[-2:] if len(s.shape) >= 2 else ((rows, 1) if len(s.shape) == 1 and s.shape[0] == rows
                                                             and rows > 1 else (1, 1))
            per_matrix = grid[0] * grid[1]
            _fit(per_matrix > 0 and len(s.shape) <= len(t.shape)
                 and math.prod(s.shape) in (per_matrix, per_matrix * math.prod(t.shape[:-2])),
                 f"scale '{printable(scale_name)}' {list(s.shape)} does not fit weight {list(t.shape)}")
            bm, bn = block_cfg if block_cfg and (-(-rows // block_cfg[0]), -(-cols // block_cfg[1])) == tuple(grid) \
                else (-(-rows // grid[0]), -(-cols // grid[1]))
            _fit(-(-rows // bm) == grid[0] and -(-cols // bn) == grid[1],
                 f"scale grid {list(grid)} does not tile weight {list(t.shape)}")
            label = "per-tensor" if grid == (1, 1) else "per-channel" if bn >= cols and bm == 1 else f"block {bm}x{bn}"
            return _lazy(t.shape, np.float32, f"{_F8_NAMES[np.dtype(t.dtype)]} {label}",
                         lambda: quant.fp8_blocks(t.load(), s.load(), (bm, bn)), f"tensor '{printable(name)}'", path)

        out[name] = (_group(tensors, name, [name, scale_name], build, path), [name, scale_name])
    return out


# -- MXFP4 (gpt-oss) ----------------------------------------------------------------------------
def _mxfp4(tensors, config, taken, path):
    out = {}
    for name, t in tensors.items():
        stem = _base(name, "_blocks")
        if stem is None or name in taken or f"{stem}_scales" not in tensors or np.dtype(t.dtype) != np.uint8:
            continue
        s = tensors[f"{stem}_scales"]

        def build(t=t, s=s, stem=stem):
            _fit(len(t.shape) >= 2 and t.shape[-1] == 16 and tuple(t.shape[:-1]) == tuple(s.shape),
                 f"MXFP4 blocks {list(t.shape)} and scales {list(s.shape)} do not fit (blocks (..., G, 16), "
                 "scales (..., G))")
            lead, g = tuple(t.shape[:-2]), t.shape[-2]
            shape = (*lead, g * 32)
            transpose = len(shape) == 3  # gpt-oss experts: (E, out, in) stored, (E, in, out) as the parameter

            def fn(t=t, s=s, transpose=transpose):
                blocks, scales = t.load(), s.load()
                if not transpose:
                    return quant.mxfp4(blocks, scales)
                # each expert (out, in) stored, written transposed into the (E, in, out) output a band of rows at a time
                n_exp, rows, cols = blocks.shape[0], blocks.shape[1], g * 32
                out = np.empty((n_exp, cols, rows), np.float32)
                step = quant.chunk_rows(cols * 4)
                for e in range(n_exp):
                    for r in range(0, rows, step):
                        out[e, :, r:r + step] = quant.mxfp4(blocks[e, r:r + step], scales[e, r:r + step]).T
                return out

            final = (shape[0], shape[2], shape[1]) if transpose else shape
            return _lazy(final, np.float32, "MXFP4 block 32", fn, f"tensor '{printable(stem)}'", path)

        members = [name, f"{stem}_scales"]
        out[stem] = (_group(tensors, stem, members, build, path), members)
    return out


# -- bitsandbytes ---------------------------------------------------------------------------------
_BNB_DTYPES = {"float32": np.float32, "float16": np.float16, "bfloat16": ml_dtypes.bfloat16}


def _bnb_4bit(tensors, config, taken, path):
    out = {}
    for name, t in tensors.items():
        weight = next((_base(name, s) for s in (".quant_state.bitsandbytes__nf4", ".quant_state.bitsandbytes__fp4")
                       if name.endswith(s)), None)
        if weight is None or weight not in tensors or weight in taken:
            continue
        members = [weight, name] + [f"{weight}.{k}" for k in ("absmax", "quant_map", "nested_absmax",
                                                            "nested_quant_map") if f"{weight}.{k}" in tensors]

        def build(weight=weight, qs=t):
            _fit(math.prod(qs.shape) <= 1 << 16, "bitsandbytes quant state is over 64 KiB")
            try:
                state = json.loads(bytes(np.asarray(qs.load(), np.uint8).reshape(-1)).decode("utf-8"))
            except (ValueError, UnicodeDecodeError, RecursionError):
                state = None
            _fit(isinstance(state, dict), "bitsandbytes quant state is not a JSON object")
            shape, blocksize, dtype = state.get("shape"), state.get("blocksize"), state.get("dtype")
            _fit(isinstance(shape, list) and all(type(d) is int and d >= 0 for d in shape) and 1 <= len(shape) <= 5
                 and type(blocksize) is int and blocksize > 0 and isinstance(dtype, str) and dtype in _BNB_DTYPES,
                 "bitsandbytes quant state lacks a shape, blocksize or float dtype")
            n = math.prod(shape)
            blocksize = min(blocksize, max(n, 1))  # a block past the values: one block
            w, absmax, qmap = tensors[weight], tensors.get(f"{weight}.absmax"), tensors.get(f"{weight}.quant_map")
            _fit(absmax is not None and qmap is not None and math.prod(qmap.shape) == 16,
                 "bitsandbytes 4-bit weight without absmax and a 16-entry quant_map")
            _fit(math.prod(w.shape) * np.dtype(w.dtype).itemsize * 2 >= n,
                 f"bitsandbytes packed weight {list(w.shape)} holds fewer than the {n} values of {shape}")
            _fit(math.prod(absmax.shape) == -(-n // blocksize), f"absmax of {math.prod(absmax.shape)} entries for "
                 f"{-(-n // blocksize)} blocks")
            nested = f"{weight}.nested_absmax" in tensors
            if nested:
                nb, off = state.get("nested_blocksize"), state.get("nested_offset")
                na, nq = tensors[f"{weight}.nested_absmax"], tensors.get(f"{weight}.nested_quant_map")
                _fit(type(nb) is int and nb > 0 and isinstance(off, (int, float)) and nq is not None and
                     math.prod(nq.shape) == 256 and math.prod(na.shape) == -(-math.prod(absmax.shape) // nb),
                     "bitsandbytes nested quant state does not fit")

            def fn():
                am = absmax.load()
                if nested:
                    am = quant.blockwise_codes(am, na.load(), nq.load().reshape(-1), nb)
                    am += np.float32(off)
                return quant.bnb_4bit(w.load(), am, qmap.load().reshape(-1), blocksize, tuple(shape),
                                      _BNB_DTYPES[dtype])

            kind = "NF4" if name.endswith("nf4") else "FP4"
            return _lazy(shape, _BNB_DTYPES[dtype], f"bitsandbytes {kind} block {blocksize}", fn,
                         f"tensor '{printable(weight)}'", path)

        out[weight] = (_group(tensors, weight, members, build, path), members)
    return out


def _bnb_int8(tensors, config, taken, path):
    out = {}
    for name, t in tensors.items():
        stem = _base(name, ".SCB")
        weight = f"{stem}.weight" if stem is not None else None
        if weight is None or weight not in tensors or weight in taken or np.dtype(tensors[weight].dtype) != np.int8:
            continue
        w = tensors[weight]
        members = [weight, name] + ([f"{stem}.weight_format"] if f"{stem}.weight_format" in tensors else [])

        def build(w=w, scb=t):
            _fit(len(w.shape) == 2 and math.prod(scb.shape) == w.shape[0],
                 f"int8 weight {list(w.shape)} and SCB {list(scb.shape)} do not fit (one scale a row)")
            return _lazy(w.shape, np.float32, "bitsandbytes int8 per-row",
                         lambda: quant.int8_rowwise(w.load(), scb.load()), f"tensor '{printable(weight)}'", path)

        out[weight] = (_group(tensors, weight, members, build, path), members)
    return out


# -- GPTQ / AWQ ------------------------------------------------------------------------------------
def _gptq_awq(tensors, config, taken, path):
    out = {}
    method = str(config.get("quant_method", "")).lower()
    bits = config.get("bits", config.get("w_bit", 4))
    for name, t in tensors.items():
        stem = _base(name, ".qweight")
        if stem is None or name in taken or f"{stem}.scales" not in tensors:
            continue
        members = [name] + [f"{stem}.{k}" for k in ("qzeros", "scales", "g_idx") if f"{stem}.{k}" in tensors]
        weight = f"{stem}.weight"

        def build(q=t, stem=stem):
            s, z, g = tensors[f"{stem}.scales"], tensors.get(f"{stem}.qzeros"), tensors.get(f"{stem}.g_idx")
            _fit(type(bits) is int and bits in (2, 4, 8), f"{bits}-bit GPTQ/AWQ weights (2, 4 and 8 are read)")
            per = 32 // bits
            _fit(len(q.shape) == 2 and len(s.shape) == 2 and np.dtype(q.dtype).kind in "iu" and
                 np.dtype(q.dtype).itemsize == 4, "qweight and scales are not 2-D with 32-bit integer qweight")
            awq = method == "awq" or (method != "gptq" and q.shape[1] * per == s.shape[1] and q.shape[1] != s.shape[1])
            if awq:
                n_in, n_out = q.shape[0], q.shape[1] * per
            else:
                n_in, n_out = q.shape[0] * per, q.shape[1]
            _fit(not awq or bits == 4, f"AWQ int{bits} weights (AWQ's packing order is defined for 4 bits)")
            _fit(s.shape[1] == n_out and s.shape[0] >= 1 and n_in % s.shape[0] == 0,
                 f"{'AWQ' if awq else 'GPTQ'} qweight {list(q.shape)} and scales {list(s.shape)} do not fit")
            group = config.get("group_size", config.get("q_group_size"))
            group = group if type(group) is int and group > 0 else n_in // s.shape[0]
            group = n_in if group <= 0 else min(group, max(n_in, 1))  # a group past the rows: one group
            _fit(-(-n_in // group) == s.shape[0], f"group size {group} does not give the {s.shape[0]} scale rows")
            _fit(z is not None or awq, "GPTQ qweight without qzeros")
            if z is not None:
                _fit(tuple(z.shape) == (s.shape[0], -(-n_out // per)) and np.dtype(z.dtype).kind in "iu" and
                     np.dtype(z.dtype).itemsize == 4, f"qzeros {list(z.shape)} {np.dtype(z.dtype)} do not fit scales "
                     f"{list(s.shape)}")
            gi = None
            if g is not None and not awq:
                _fit(tuple(g.shape) == (n_in,) and np.dtype(g.dtype).kind in "iu",
                     f"g_idx {list(g.shape)} is not one integer group a row ({n_in})")
                gi = np.asarray(g.load())  # one int a row: checked here, so a bad one is a skipped entry
                _fit(gi.min(initial=0) >= 0 and gi.max(initial=0) < s.shape[0],
                     f"g_idx points past the {s.shape[0]} groups")
            v1 = str(config.get("checkpoint_format", "gptq")).lower() != "gptq_v2"

            def fn():
                zeros = z.load() if z is not None else None
                if awq:
                    return quant.awq(q.load(), zeros, s.load(), bits, group)
                return quant.gptq(q.load(), zeros, s.load(), gi, bits, group, v1)

            label = f"{'AWQ' if awq else 'GPTQ'} int{bits} group {group}"
            return _lazy((n_out, n_in), s.dtype, label, fn, f"tensor '{printable(stem)}'", path)

        out[weight] = (_group(tensors, weight, members, build, path), members)
    return out


# -- MLX ---------------------------------------------------------------------------------------------
def _mlx(tensors, config, taken, path):
    out = {}
    mlx = config.get("mlx") if isinstance(config.get("mlx"), dict) else {}
    for name, t in tensors.items():
        stem = _base(name, ".weight")
        if stem is None or name in taken or np.dtype(t.dtype) != np.uint32 or f"{stem}.scales" not in tensors \
                or f"{stem}.biases" not in tensors:
            continue
        members = [name, f"{stem}.scales", f"{stem}.biases"]

        def build(w=t, stem=stem):
            s, b = tensors[f"{stem}.scales"], tensors[f"{stem}.biases"]
            own = mlx.get(stem) if isinstance(mlx.get(stem), dict) else mlx
            bits, group = own.get("bits"), own.get("group_size")
            _fit(type(bits) is int and type(group) is int, "MLX quantized weight without bits and group_size in "
                 "config.json's 'quantization'")
            _fit(bits in (2, 3, 4, 5, 6, 8) and group > 0, f"MLX {bits}-bit weights (2-6 and 8 are read)")
            _fit(len(w.shape) == 2 and tuple(s.shape) == tuple(b.shape) and len(s.shape) == 2 and
                 s.shape[0] == w.shape[0] and (w.shape[1] * 32) % bits == 0 and
                 s.shape[1] * group == w.shape[1] * 32 // bits,
                 f"MLX weight {list(w.shape)}, scales {list(s.shape)}, biases {list(b.shape)} do not fit "
                 f"{bits} bits in groups of {group}")
            cols = w.shape[1] * 32 // bits
            return _lazy((w.shape[0], cols), s.dtype, f"MLX affine int{bits} group {group}",
                         lambda: quant.mlx_affine(w.load(), s.load(), b.load(), bits, group),
                         f"tensor '{printable(name)}'", path)

        out[name] = (_group(tensors, name, members, build, path), members)
    return out


# -- compressed-tensors pack-quantized (llm-compressor's W4A16 / W8A16) -------------------------------
def _ct_bits(config) -> int | None:
    groups = config.get("config_groups")
    if isinstance(groups, dict):
        for group in groups.values():
            weights = group.get("weights") if isinstance(group, dict) else None
            if isinstance(weights, dict) and type(weights.get("num_bits")) is int:
                return weights["num_bits"]
    return None


def _pack_quantized(tensors, config, taken, path):
    out = {}
    bits = _ct_bits(config)
    for name, t in tensors.items():
        stem = _base(name, ".weight_packed")
        if stem is None or name in taken or f"{stem}.weight_scale" not in tensors:
            continue
        members = [name] + [f"{stem}.{k}" for k in ("weight_scale", "weight_zero_point", "weight_g_idx",
                                                     "weight_shape") if f"{stem}.{k}" in tensors]
        weight = f"{stem}.weight"

        def build(p=t, stem=stem):
            s, z = tensors[f"{stem}.weight_scale"], tensors.get(f"{stem}.weight_zero_point")
            g, shp = tensors.get(f"{stem}.weight_g_idx"), tensors.get(f"{stem}.weight_shape")
            _fit(type(bits) is int and 1 <= bits <= 8, "pack-quantized weights without num_bits (1-8) in "
                 "config.json's quantization_config.config_groups")
            _fit(np.dtype(p.dtype) == np.int32 and len(p.shape) == 2, "weight_packed is not a 2-D int32 tensor")
            shape = None
            if shp is not None and math.prod(shp.shape) == 2 and np.dtype(shp.dtype).kind in "iu":
                shape = tuple(int(d) for d in np.asarray(shp.load()).reshape(-1))
            _fit(shape is not None and shape[0] == p.shape[0] and min(shape) > 0 and
                 -(-shape[1] * bits // 32) == p.shape[1],
                 f"weight_shape does not fit weight_packed {list(p.shape)} at {bits} bits")
            groups = 1 if math.prod(s.shape) == 1 else math.prod(s.shape) // shape[0]
            _fit(math.prod(s.shape) in (1, shape[0] * groups) and 1 <= groups <= shape[1],
                 f"weight_scale {list(s.shape)} does not fit weight {list(shape)}")
            gi = None
            if g is not None:
                _fit(tuple(g.shape) == (shape[1],) and np.dtype(g.dtype).kind in "iu",
                     f"weight_g_idx {list(g.shape)} is not one integer group a column")
                gi = np.asarray(g.load())
                _fit(gi.min(initial=0) >= 0 and gi.max(initial=0) < groups,
                     f"weight_g_idx points past the {groups} groups")
            if z is not None:
                _fit(len(z.shape) == 2 and z.shape[1] == groups and z.shape[0] == -(-shape[0] * bits // 32),
                     f"weight_zero_point {list(z.shape)} does not fit {groups} groups")

            def fn():
                return quant.pack_quantized(p.load(), s.load(), z.load() if z is not None else None, shape, bits, gi)

            label = "per-tensor" if math.prod(s.shape) == 1 else "per-channel" if groups == 1 else \
                f"group {-(-shape[1] // groups)}"
            return _lazy(shape, s.dtype, f"compressed-tensors int{bits} {label}", fn,
                         f"tensor '{printable(stem)}'", path)

        out[weight] = (_group(tensors, weight, members, build, path), members)
    return out
