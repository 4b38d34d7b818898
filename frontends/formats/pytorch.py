"""PyTorch checkpoints: the zip format (`torch.save` since 1.6) and the legacy pre-1.6 format,
unpickled by the restricted unpickler (`unpickler.py`), or by `torch.load` under `trust=True`;
a folder holding `pytorch_model.bin` (or shards with `pytorch_model.bin.index.json`); and
`torch.distributed.checkpoint` folders (`.metadata` + `*.distcp`, read by torch under `trust`).

A training checkpoint is a nested dict: `find_weights` searches it for the model's weights
(`state_dict`, `model`, `module`, ... ; Lightning's, DeepSpeed's and FSDP's layouts), says which
entry it chose in a note, and refuses a file that holds no weight (optimizer state alone is not
weights).
"""

from __future__ import annotations

import io
import math
import mmap
import os
import struct
import zipfile
from collections.abc import Callable

import numpy as np

from irtools.errors import ModelLoadError, UnsupportedError, printable
from irtools.files import model_member
from irtools.frontends import require

from .common import (INFLATE_FREE, MAX_RATIO, OpenOnce, StoredArray, WeightSet, checkpoint_order, zip_member,
                     zip_read)
from .unpickler import MapReader, Storage, TensorRef, check_view, unpickle

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
#: The first bytes of a legacy checkpoint: protocol 2, LONG1 of the magic number.
LEGACY_HEAD = b"\x80\x02\x8a\x0a" + LEGACY_MAGIC.to_bytes(10, "little")


def looks_like(head: bytes, path: str) -> bool:
    """A torch zip (a `*/data.pkl` entry) or a legacy checkpoint, from its first bytes."""
    if head.startswith(LEGACY_HEAD):
        return True
    if not head.startswith(b"PK\x03\x04"):
        return False
    try:
        with zipfile.ZipFile(path) as z:
            return any(n.endswith("data.pkl") for n in z.namelist()[:64])
    except (zipfile.BadZipFile, OSError, ValueError):
        return False


# -- which entry of a checkpoint holds the weights ------------------------------------------------
#: Entries that hold a model's weights, in the order they are preferred (the trained weights before
#: an exponential moving average of them).
WEIGHT_KEYS = ("state_dict", "model_state_dict", "model", "module", "model_state", "net", "network", "params",
               "weights", "generator", "student")
EMA_KEYS = ("ema", "model_ema", "ema_model", "state_dict_ema", "ema_state_dict", "ema_state", "averaged_model")
#: Entries that hold tensors which are not weights.
NOT_WEIGHTS = ("optimizer", "optimizer_states", "optimizer_state_dict", "optimizer_state", "optim", "opt",
               "lr_scheduler", "lr_schedulers", "scheduler", "scaler", "grad_scaler", "callbacks", "loops",
               "rng_state", "rng_states", "amp", "loss_scaler")
#: Module-path parts wrappers add (FSDP, activation checkpointing, torch.compile).
WRAPPER_PARTS = ("_fsdp_wrapped_module", "_checkpoint_wrapped_module", "_orig_mod")
_MAX_DEPTH = 6


def find_weights(obj, is_tensor: Callable, path: str) -> tuple[dict[str, object], list[str]]:
    """The weights of a checkpoint `obj` as {name: tensor} and the notes saying where they were found."""
    if not isinstance(obj, dict):
        raise UnsupportedError(f"the file holds a {type(obj).__name__}, not a state dict (a dict of tensors)", path)
    where, chosen = _choose(obj, is_tensor, (), path)
    if chosen is None:
        holders = [str(k) for k, v in obj.items() if _count(v, is_tensor, 0)]
        top = ", ".join(printable(str(k)) for k in list(obj)[:8])
        if holders:
            raise ModelLoadError(f"no weights found: the checkpoint's tensors are all under "
                                 f"{', '.join(repr(h) for h in holders)} (not model weights); its entries: {top}", path)
        raise ModelLoadError(f"no weights found: the checkpoint holds no tensor (its entries: {top or 'none'})", path)
    flat = _flatten(chosen, is_tensor, "", 0)
    notes = []
    if where:
        others = [str(k) for k in obj if k != where[0]]
        notes.append(f"weights read from the checkpoint's '{'.'.join(where)}' entry ({len(flat)} tensors)"
                     + (f"; also in the file: {', '.join(printable(o) for o in others[:6])}"
                        + (", ..." if len(others) > 6 else "") if others else ""))
        for key in EMA_KEYS:
            if key != where[-1] and isinstance(obj.get(key), dict) and _count(obj[key], is_tensor, 0):
                notes.append(f"the checkpoint also holds '{key}' weights ({_count(obj[key], is_tensor, 0)} "
                             "tensors), not analysed")
    flat, stripped = _strip_wrappers(flat, lightning="pytorch-lightning_version" in obj or
                                     "lightning_version" in obj)
    notes += stripped
    if flat and all(math.prod(getattr(v, "shape", (1,))) == 0 for v in flat.values()):
        raise ModelLoadError("every weight in the checkpoint is empty (a partitioned DeepSpeed ZeRO-3 or sharded "
                             "FSDP checkpoint keeps its weights elsewhere: consolidate it first, e.g. with "
                             "zero_to_fp32.py)", path)
    return flat, notes


def _count(obj, is_tensor, depth: int) -> int:
    if is_tensor(obj):
        return 1
    if not isinstance(obj, dict) or depth > _MAX_DEPTH:
        return 0
    return sum(_count(v, is_tensor, depth + 1) for k, v in obj.items() if k not in NOT_WEIGHTS)


def _choose(obj: dict, is_tensor, where: tuple, path: str):
    """(the path of keys to the dict holding the weights, that dict), or (where, None)."""
    if len(where) > _MAX_DEPTH:
        return where, None
    direct = sum(1 for v in obj.values() if is_tensor(v))
    for key in WEIGHT_KEYS + EMA_KEYS:
        sub = obj.get(key)
        if isinstance(sub, dict) and _count(sub, is_tensor, 0) > direct:
            found = _choose(sub, is_tensor, (*where, key), path)
            if found[1] is not None:
                return found
    if direct:
        return where, obj
    subs = [(k, v) for k, v in obj.items() if isinstance(v, dict) and k not in NOT_WEIGHTS
            and _count(v, is_tensor, 0)]
    if not subs:
        return where, None
    if len(subs) == 1:
        return _choose(subs[0][1], is_tensor, (*where, str(subs[0][0])), path)
    return where, obj  # several weight-holding entries: all of them, by their dotted names


def _flatten(obj: dict, is_tensor, prefix: str, depth: int) -> dict:
    out = {}
    for k, v in obj.items():
        if not isinstance(k, (str, int)):
            if is_tensor(v):
                raise ModelLoadError(f"a tensor is stored under a {type(k).__name__} key, not a name")
            continue
        name = f"{prefix}{k}"
        if is_tensor(v):
            out[name] = v
        elif isinstance(v, dict) and k not in NOT_WEIGHTS and depth < _MAX_DEPTH:
            out.update(_flatten(v, is_tensor, f"{name}.", depth + 1))
    return out


def _strip_wrappers(flat: dict, lightning: bool) -> tuple[dict, list[str]]:
    """Names without the parts wrappers add: FSDP's and torch.compile's module parts, DDP's and
    DeepSpeed's `module.` prefix, a Lightning module's attribute holding the model."""
    notes = []
    if any(p in name.split(".") for name in flat for p in WRAPPER_PARTS):
        flat = {".".join(p for p in name.split(".") if p not in WRAPPER_PARTS): v for name, v in flat.items()}
        notes.append(f"wrapper module names ({', '.join(WRAPPER_PARTS)}) dropped from the tensor names")
    for prefix in ("module.",) + (("model.",) if lightning else ()):
        if len(flat) and all(name.startswith(prefix) for name in flat):
            flat = {name[len(prefix):]: v for name, v in flat.items()}
            notes.append(f"the '{prefix[:-1]}.' prefix every tensor name had is dropped")
    return flat, notes


# -- restricted reading ---------------------------------------------------------------------------
def _state(obj, path: str) -> tuple[dict[str, TensorRef], list[str]]:
    flat, notes = find_weights(obj, lambda v: isinstance(v, TensorRef), path)
    for name, ref in flat.items():
        _check_view_size(name, ref, path)
    return flat, notes


def _check_view_size(name: str, ref: TensorRef, path: str) -> None:
    """A view's bytes against the budget, and against its storage's: zero strides can make a
    one-element storage a tensor of any size (refused over `MAX_RATIO` times its storage)."""
    from irtools import budget  # noqa: PLC0415

    item = ref.storage.dtype.itemsize
    budget.check_shape(ref.shape, item, f"tensor '{printable(name)}'", path)
    nbytes, stored = math.prod(ref.shape) * item, ref.storage.numel * item
    if nbytes > max(INFLATE_FREE, stored * MAX_RATIO):
        raise ModelLoadError(f"tensor '{printable(name)}' of size {list(ref.shape)} repeats its storage of "
                             f"{ref.storage.numel} elements over {MAX_RATIO} times (refused)", path)


def _tensor_loader(read_storage: Callable[[Storage], np.ndarray], ref: TensorRef):
    def load():
        flat = read_storage(ref.storage)
        if flat.size < ref.storage.numel:
            raise ModelLoadError(f"storage '{printable(ref.storage.key)}' holds {flat.size} elements, fewer than "
                                 f"the {ref.storage.numel} it declares (corrupt file)")
        check_view(ref)
        if not math.prod(ref.shape):
            return np.zeros(ref.shape, flat.dtype)
        item = flat.dtype.itemsize
        return np.lib.stride_tricks.as_strided(
            flat[ref.offset:], shape=ref.shape, strides=tuple(s * item for s in ref.stride)).copy()

    return load


def _result(arrays: dict, notes: list[str]) -> WeightSet:
    out = WeightSet(arrays)
    out.notes = notes
    return out


def read(path: str, trust: bool = False) -> dict[str, StoredArray]:
    """A checkpoint file: the zip format where it is a zip, else the legacy format."""
    if zipfile.is_zipfile(path):
        return _read_zip(path, trust)
    return _read_legacy(path, trust)


def _read_zip(path: str, trust: bool) -> dict[str, StoredArray]:
    if trust:
        return _read_trusted(path)
    with zipfile.ZipFile(path) as z:
        pkl = next((n for n in z.namelist() if n.endswith("data.pkl")), None)
        if pkl is None:
            raise ModelLoadError("zip file without data.pkl: not a PyTorch checkpoint", path)
        prefix = pkl[: -len("data.pkl")]
        swap = _big_endian(z, prefix, path)
        state, notes = _state(unpickle(io.BytesIO(zip_read(z, pkl, path)), path), path)
        for st in {r.storage.key: r.storage for r in state.values()}.values():
            info = zip_member(z, f"{prefix}data/{st.key}", path, f"storage '{printable(st.key)}'")
            if info.file_size < st.numel * st.dtype.itemsize:
                raise ModelLoadError(f"storage '{printable(st.key)}' holds {info.file_size} bytes, fewer than the "
                                     f"{st.numel * st.dtype.itemsize} it declares (corrupt file)", path)

    archive = OpenOnce(lambda: zipfile.ZipFile(path))

    def read_storage(st: Storage) -> np.ndarray:
        raw = archive().read(f"{prefix}data/{st.key}")
        count = min(st.numel, len(raw) // st.dtype.itemsize)
        if swap:  # each element's bytes reversed, whatever the dtype (bfloat16 and float8 included)
            raw = np.frombuffer(raw, np.uint8, count * st.dtype.itemsize).reshape(count, st.dtype.itemsize)[:, ::-1]
            return np.ascontiguousarray(raw).view(st.dtype).reshape(count)
        return np.frombuffer(raw, dtype=st.dtype, count=count)

    return _result({k: StoredArray(r.shape, r.storage.dtype, _tensor_loader(read_storage, r))
                    for k, r in state.items()}, notes)


def _big_endian(z: zipfile.ZipFile, prefix: str, path: str) -> bool:
    """Whether the archive's storages are big-endian: PyTorch records the byte order of the machine
    that saved it in `byteorder` ("little" or "big"; absent before PyTorch 2.1: little)."""
    member = f"{prefix}byteorder"
    if member not in z.namelist():
        return False
    order = zip_read(z, member, path)[:16].strip()
    if order not in (b"little", b"big"):
        raise ModelLoadError(f"byteorder record is '{printable(order.decode('latin-1'))}', not little or big", path)
    return order == b"big" and np.little_endian or order == b"little" and not np.little_endian


def _read_legacy(path: str, trust: bool) -> dict[str, StoredArray]:
    with open(path, "rb") as fh:
        if os.fstat(fh.fileno()).st_size == 0:
            raise ModelLoadError("file is empty", path)
        buf = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
    with buf:
        return _read_legacy_pickles(MapReader(buf), len(buf), path, trust)


def _read_legacy_pickles(reader: MapReader, size: int, path: str, trust: bool) -> dict[str, StoredArray]:
    if unpickle(reader, path) != LEGACY_MAGIC:
        raise ModelLoadError("not a PyTorch checkpoint (no zip archive, no legacy magic number)", path)
    unpickle(reader, path)  # protocol version
    unpickle(reader, path)  # sys info
    if trust:
        return _read_trusted(path)
    state, notes = _state(unpickle(reader, path), path)
    keys = unpickle(reader, path)
    if not isinstance(keys, (list, tuple)):
        raise ModelLoadError("legacy checkpoint: the storage key list is not a list", path)
    offsets: dict[str, int] = {}
    storages = {r.storage.key: r.storage for r in state.values()}
    for key in keys:
        head = reader.read(8)
        if len(head) < 8:
            raise ModelLoadError("truncated PyTorch checkpoint", path)
        (numel,) = struct.unpack("<q", head)
        st = storages.get(str(key))
        itemsize = st.dtype.itemsize if st is not None else 4
        if numel < 0 or (st is not None and numel != st.numel):
            raise ModelLoadError(f"storage '{printable(key)}' has {numel} elements in the file, the pickle says "
                                 f"{st.numel if st is not None else 'nothing'} (corrupt file)", path)
        offsets[str(key)] = reader.tell()
        reader.seek(numel * itemsize, io.SEEK_CUR)
        if reader.tell() > size:
            raise ModelLoadError("truncated PyTorch checkpoint", path)
    missing = sorted(set(storages) - set(offsets))
    if missing:
        raise ModelLoadError(f"storage '{printable(missing[0])}' of a tensor is not in the file", path)

    def read_storage(st: Storage) -> np.ndarray:
        return np.fromfile(path, dtype=st.dtype, count=st.numel, offset=offsets[st.key])

    return _result({k: StoredArray(r.shape, r.storage.dtype, _tensor_loader(read_storage, r))
                    for k, r in state.items()}, notes)


def _torch():
    return require("torch", missing="--trust needs PyTorch to unpickle the file: pip install irtools[torch]")


def _numpy_of(torch, v) -> np.ndarray:
    v = v.detach().cpu()
    return v.float().numpy() if v.dtype == torch.bfloat16 else v.numpy()


def _read_trusted(path: str) -> dict[str, StoredArray]:
    torch = _torch()
    obj = torch.load(path, map_location="cpu", weights_only=False)
    return _trusted_result(torch, obj, path)


def _trusted_result(torch, obj, path: str) -> dict[str, StoredArray]:
    def modules_as_state(o, depth=0):  # a whole module saved (alone or as an entry): its state dict
        if isinstance(o, torch.nn.Module):
            return o.state_dict()
        if isinstance(o, dict) and depth < _MAX_DEPTH:
            return {k: modules_as_state(v, depth + 1) for k, v in o.items()}
        return o

    obj = modules_as_state(obj)
    flat, notes = find_weights(obj, lambda v: isinstance(v, torch.Tensor), path)
    arrays = {k: _numpy_of(torch, v) for k, v in flat.items()}
    return _result({k: StoredArray(tuple(v.shape), v.dtype, (lambda v=v: v)) for k, v in arrays.items()}, notes)


# -- folders ---------------------------------------------------------------------------------
INDEX = "pytorch_model.bin.index.json"


def is_folder(path: str, names: list[str]) -> bool:
    return INDEX in names or any(n.startswith("pytorch_model") and n.endswith(".bin") for n in names)


def read_folder(path: str, trust: bool = False) -> dict[str, StoredArray]:
    """A folder saved with `save_pretrained(safe_serialization=False)`: `pytorch_model.bin`, or the
    shards `pytorch_model.bin.index.json` names."""
    from .safetensors import read_index  # noqa: PLC0415  (the same index format)

    names = os.listdir(path)
    if INDEX in names:
        weight_map = read_index(path, model_member(path, INDEX, "shard index", ModelLoadError))
        files = sorted(set(weight_map.values()))
    else:
        weight_map, files = None, sorted(n for n in names if n.startswith("pytorch_model") and n.endswith(".bin"))
    out: dict[str, StoredArray] = {}
    notes: list[str] = []
    for f in files:
        part = read(model_member(path, f, "shard", ModelLoadError), trust)
        notes += part.notes
        for name, array in part.items():
            if name in out:
                raise ModelLoadError(f"tensor '{printable(name)}' is in two shards", path)
            out[name] = array
    if weight_map is not None:
        missing = sorted(set(weight_map) - set(out))
        if missing:
            raise ModelLoadError(f"the index names tensor '{printable(missing[0])}', which no shard holds", path)
    return _result({n: out[n] for n in checkpoint_order(list(out))}, notes)


def is_dcp_folder(path: str, names: list[str]) -> bool:
    return ".metadata" in names and any(n.endswith(".distcp") for n in names)


def read_dcp(path: str, trust: bool = False) -> dict[str, StoredArray]:
    """A `torch.distributed.checkpoint` folder: its `.metadata` is a pickle of torch's own classes, so
    it is read by torch's loader, and only under `trust`."""
    if not trust:
        raise UnsupportedError("a torch.distributed.checkpoint folder: its .metadata is a pickle of torch classes, "
                               "read only with --trust (torch.distributed.checkpoint loads it)", path)
    torch = _torch()
    from torch.distributed.checkpoint import FileSystemReader  # noqa: PLC0415
    from torch.distributed.checkpoint.default_planner import _EmptyStateDictLoadPlanner  # noqa: PLC0415
    from torch.distributed.checkpoint.state_dict_loader import _load_state_dict  # noqa: PLC0415

    state: dict = {}
    _load_state_dict(state, storage_reader=FileSystemReader(path), planner=_EmptyStateDictLoadPlanner(),
                     no_dist=True)
    return _trusted_result(torch, state, path)


