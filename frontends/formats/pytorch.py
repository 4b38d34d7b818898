"""PyTorch checkpoints: the zip format (`torch.save` since 1.6) and the legacy pre-1.6 format,
unpickled by the restricted unpickler (`unpickler.py`), or by `torch.load` under `trust=True`;
a folder holding `pytorch_model.bin` (or shards with `pytorch_model.bin.index.json`); and
`torch.distributed.checkpoint` folders (`.metadata` + `*.distcp`, read by torch under `trust`); and
DeepSpeed ZeRO-1/2/3 checkpoint folders (`latest` + `global_stepN/`), their fp32 weights reassembled
from the ranks' optimizer partitions as DeepSpeed's `zero_to_fp32.py` does (`read_deepspeed`).

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
import re
import struct
import zipfile
from collections.abc import Callable

import numpy as np

from irtools.errors import IrtoolsError, ModelLoadError, UnsupportedError, printable
from irtools.files import model_member, model_root
from irtools.frontends import require

from .common import (INFLATE_FREE, MAX_RATIO, OpenOnce, StoredArray, WeightSet, checkpoint_order, zip_archive,
                     zip_member, zip_read)
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
    flat = _flatten(chosen, is_tensor, "", 0, path)
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
                                     "lightning_version" in obj, path=path)
    notes += stripped
    if flat and all(math.prod(getattr(v, "shape", (1,))) == 0 for v in flat.values()):
        raise ModelLoadError("every weight in the checkpoint is empty (a partitioned DeepSpeed ZeRO-3 or sharded "
                             "FSDP checkpoint keeps its weights elsewhere: give irtools the DeepSpeed checkpoint "
                             "folder with its '*_optim_states.pt' files, or consolidate it first, e.g. with "
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


def _flatten(obj: dict, is_tensor, prefix: str, depth: int, path: str | None = None) -> dict:
    """{dotted name: tensor} of a nested state dict. Two tensors of one dotted name (`{"a.b": t, "a": {"b": u}}`,
    keys 1 and "1") are refused: before, the later one replaced the other without a word."""
    out = {}
    for k, v in obj.items():
        if not isinstance(k, (str, int)):
            if is_tensor(v):
                raise ModelLoadError(f"a tensor is stored under a {type(k).__name__} key, not a name", path)
            continue
        name = f"{prefix}{k}"
        found = {name: v} if is_tensor(v) else _flatten(v, is_tensor, f"{name}.", depth + 1, path) \
            if isinstance(v, dict) and k not in NOT_WEIGHTS and depth < _MAX_DEPTH else {}
        _unique_names(out, found, "", path)
        out.update(found)
    return out


def _unique_names(out: dict, new: dict, why: str, path: str | None) -> None:
    twice = next((n for n in new if n in out), None)
    if twice is not None:
        raise ModelLoadError(f"two tensors of the checkpoint are both named '{printable(twice)}'{why} (which one is "
                             "meant is a guess: refused)", path)


def _strip_wrappers(flat: dict, lightning: bool, path: str | None = None) -> tuple[dict, list[str]]:
    """Names without the parts wrappers add: FSDP's and torch.compile's module parts, DDP's and
    DeepSpeed's `module.` prefix, a Lightning module's attribute holding the model."""
    notes = []
    if any(p in name.split(".") for name in flat for p in WRAPPER_PARTS):
        stripped: dict = {}
        for name, v in flat.items():
            bare = ".".join(p for p in name.split(".") if p not in WRAPPER_PARTS)
            _unique_names(stripped, {bare: v}, " once the wrapper module names are dropped", path)
            stripped[bare] = v
        flat = stripped
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
    # views of one storage as many tensors: each within its storage, together a storage read many times over
    viewed = sum(math.prod(r.shape) * r.storage.dtype.itemsize for r in flat.values())
    stored = sum(st.numel * st.dtype.itemsize for st in {r.storage.key: r.storage for r in flat.values()}.values())
    if viewed > max(INFLATE_FREE, stored * VIEWS_MAX_TIMES):
        raise ModelLoadError(f"the checkpoint's {len(flat)} tensors view {viewed} bytes of {stored} bytes of storages "
                             f"(over {VIEWS_MAX_TIMES}x: the same storage as many tensors, refused)", path)
    return flat, notes


#: How many times over its storages' bytes a checkpoint's tensors may view them in all (tied weights
#: view one storage twice, a fused parameter's parts once), past `INFLATE_FREE`.
VIEWS_MAX_TIMES = 16


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
    """A checkpoint file: the zip format where it is a zip, else the legacy format. A DeepSpeed
    `*_model_states.pt` beside its ranks' `*_optim_states.pt` is read as its folder (`read_deepspeed`:
    the fp32 weights; ZeRO-3's model states hold only placeholders)."""
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.basename(path).endswith(_MODEL):
        try:
            names = os.listdir(folder)
        except OSError:
            names = []
        if deepspeed_tag_folder(folder, names) == folder:
            out = read_deepspeed(folder, trust)
            out.notes.insert(0, f"'{printable(os.path.basename(path))}' is one file of a DeepSpeed checkpoint: its "
                                "folder is read")
            return out
    if zipfile.is_zipfile(path):
        return _read_zip(path, trust)
    return _read_legacy(path, trust)


def _read_zip(path: str, trust: bool) -> dict[str, StoredArray]:
    with zipfile.ZipFile(path) as z:
        zip_archive(z, path)
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
    return _trusted_result(torch, _torch_load(torch, path), path)


def _torch_load(torch, path: str, mmap: bool = False):
    """The one full unpickling of a file (only under --trust): torch's own loader."""
    return torch.load(path, map_location="cpu", weights_only=False, mmap=mmap)


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


def _has_bin(names: list[str]) -> bool:
    return INDEX in names or any(n.startswith("pytorch_model") and n.endswith(".bin") for n in names)


def is_folder(path: str, names: list[str]) -> bool:
    """`pytorch_model.bin` (or its shard index), or a DeepSpeed ZeRO checkpoint (`is_deepspeed_folder`)."""
    return _has_bin(names) or is_deepspeed_folder(path, names)


def read_folder(path: str, trust: bool = False) -> dict[str, StoredArray]:
    """A folder saved with `save_pretrained(safe_serialization=False)`: `pytorch_model.bin`, or the
    shards `pytorch_model.bin.index.json` names; else a DeepSpeed ZeRO checkpoint (`read_deepspeed`)."""
    from .safetensors import read_index  # noqa: PLC0415  (the same index format)

    names = os.listdir(path)
    if not _has_bin(names) and is_deepspeed_folder(path, names):
        return read_deepspeed(path, trust)
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




# -- DeepSpeed ZeRO checkpoints -------------------------------------------------------------
# A folder DeepSpeed's `save_checkpoint` wrote: `latest` (the tag) and `global_stepN/` holding one
# `*_model_states.pt` (ZeRO-1/2: `mp_rank_00_model_states.pt`; ZeRO-3: one per rank) and one
# `*_optim_states.pt` per data-parallel rank. The fp32 master weights are flat partitions in the
# optimizer files; they are reassembled the way DeepSpeed's own `zero_to_fp32.py` does (ZeRO-1/2: each
# param group's partitions concatenated over the ranks, the parameters in `param_shapes` order, one
# after the other; ZeRO-3: each parameter cut in `ceil(numel / world)` pieces, one per rank, the
# padding dropped), with its sanity checks. Unlike the script, nothing is concatenated whole: each
# tensor's `load()` reads only its own pieces from the files (tensor by tensor; a partition is a zip
# entry torch stores uncompressed, read at its offset), so a model never needs its fp32 copy in memory.
#: DeepSpeed's classes a ZeRO checkpoint pickles beside the tensors, read as inert records (nothing of
#: DeepSpeed runs or is imported): the ZeRO stage enum becomes its int, the loss scaler and the
#: parameter-fragment addresses plain dicts of their attributes (`unpickler.DEEPSPEED_RECORDS`).
DS_LATEST = "latest"
_OPTIM, _MODEL = "_optim_states.pt", "_model_states.pt"


def _natural(text: str) -> list:
    return [int(c) if c.isdigit() else c for c in re.split(r"(\d+)", text)]


def deepspeed_tag_folder(path: str, names: list[str]) -> str | None:
    """The folder holding a DeepSpeed checkpoint's rank files: `path` itself (a `global_stepN/`), or
    the tag its `latest` file names; None where `path` is no DeepSpeed checkpoint."""
    if any(n.endswith(_OPTIM) for n in names) and any(n.endswith(_MODEL) for n in names):
        return path
    if DS_LATEST not in names:
        return None
    try:  # a regular file of the folder: no FIFO or device, no symlink out of it (it was read: /etc/passwd)
        latest = model_member(path, DS_LATEST, f"DeepSpeed's '{DS_LATEST}' tag file", ModelLoadError)
        with open(latest, "rb") as fh:
            tag = fh.read(256).decode("utf-8", "replace").strip()
    except (OSError, IrtoolsError):
        return None
    if not tag or "/" in tag or "\\" in tag or tag in (".", ".."):
        return None
    sub = os.path.join(path, tag)
    root = model_root(path)
    if os.path.commonpath([root, os.path.realpath(sub)]) != root:  # a tag folder symlinked out of the folder
        return None
    try:
        inner = os.listdir(sub) if os.path.isdir(sub) else []
    except OSError:
        return None
    return sub if any(n.endswith(_OPTIM) for n in inner) else None


def is_deepspeed_folder(path: str, names: list[str]) -> bool:
    return deepspeed_tag_folder(path, names) is not None


class _Part:
    """A 1-D run of elements, read by range: one rank's flat partition in a file, or several runs
    one after the other (a rank's param groups for ZeRO-3, a group's ranks for ZeRO-1/2)."""

    def __init__(self, length: int, read: Callable[[int, int], np.ndarray] | None = None,
                 parts: list[_Part] | None = None):
        self.length, self._read, self.parts = length, read, parts

    @classmethod
    def joined(cls, parts: list[_Part]) -> _Part:
        return cls(sum(p.length for p in parts), parts=parts)

    def read(self, start: int, count: int) -> np.ndarray:
        if start < 0 or count < 0 or start + count > self.length:
            raise ModelLoadError(f"a DeepSpeed partition of {self.length} elements is read at {start}..{start + count} "
                                 "(corrupt checkpoint)")
        if self._read is not None:
            return self._read(start, count)
        out, base = [], 0
        for p in self.parts:
            lo, hi = max(start, base), min(start + count, base + p.length)
            if lo < hi:
                out.append(p.read(lo - base, hi - lo))
            base += p.length
        if not out:
            return self.parts[0].read(0, 0) if self.parts else np.zeros(0, np.float32)
        return np.concatenate(out) if len(out) != 1 else out[0]


class _ZipStorages:
    """Ranges of a torch zip's storages, read at their offsets in the file (torch stores each storage as
    an uncompressed entry; a compressed one is inflated whole, within the budget)."""

    def __init__(self, path: str, z: zipfile.ZipFile, prefix: str):
        self.path, self.prefix, self.swap = path, prefix, _big_endian(z, prefix, path)
        self.infos: dict[str, zipfile.ZipInfo] = {}
        self.data: dict[str, int] = {}  # where a stored (uncompressed) storage's bytes start in the file
        self.z = z

    def check(self, st: Storage) -> None:
        info = zip_member(self.z, f"{self.prefix}data/{st.key}", self.path, f"storage '{printable(st.key)}'")
        if info.file_size < st.numel * st.dtype.itemsize:
            raise ModelLoadError(f"storage '{printable(st.key)}' holds {info.file_size} bytes, fewer than the "
                                 f"{st.numel * st.dtype.itemsize} it declares (corrupt file)", self.path)
        if info.compress_type == zipfile.ZIP_STORED:
            with open(self.path, "rb") as fh:
                fh.seek(info.header_offset)
                head = fh.read(30)
            if len(head) < 30 or head[:4] != b"PK\x03\x04":
                raise ModelLoadError(f"storage '{printable(st.key)}': bad zip entry header (corrupt file)", self.path)
            name_len, extra_len = struct.unpack("<HH", head[26:30])
            self.data[st.key] = info.header_offset + 30 + name_len + extra_len
        self.infos[st.key] = info

    def read(self, st: Storage, start: int, count: int) -> np.ndarray:
        info, item = self.infos[st.key], st.dtype.itemsize
        data = self.data.get(st.key)
        if data is not None:
            out = np.fromfile(self.path, dtype=np.uint8, count=count * item, offset=data + start * item)
        else:
            with zipfile.ZipFile(self.path) as z:
                out = np.frombuffer(z.read(info), np.uint8)[start * item:(start + count) * item]
        if out.size < count * item:
            raise ModelLoadError(f"storage '{printable(st.key)}' is cut short (corrupt file)", self.path)
        if self.swap:
            out = np.ascontiguousarray(out.reshape(count, item)[:, ::-1]).reshape(-1)
        return out.view(st.dtype)


def _ref_part(storages: _ZipStorages, ref: TensorRef, what: str) -> _Part:
    """A 1-D tensor of a DeepSpeed file as a `_Part` read from its storage."""
    if len(ref.shape) != 1:  # a whole tensor (ZeRO-1/2's frozen parameters): its elements in order
        dense = tuple(math.prod(ref.shape[i + 1:]) for i in range(len(ref.shape)))
        if any(d > 1 and s != e for d, s, e in zip(ref.shape, ref.stride, dense, strict=True)):
            raise ModelLoadError(f"{what} is a strided tensor of shape {list(ref.shape)}, not a flat partition",
                                 storages.path)
        ref = TensorRef(ref.storage, ref.offset, (math.prod(ref.shape),), (1,))
    storages.check(ref.storage)
    (n,), (stride,) = ref.shape, ref.stride
    if stride == 1 or n <= 1:
        return _Part(n, lambda s, c: storages.read(ref.storage, ref.offset + s, c))
    return _Part(n, lambda s, c: storages.read(ref.storage, ref.offset + s * stride,
                                               max(0, (c - 1) * stride + 1))[::stride])


def _torch_part(torch, t) -> _Part:
    flat = t.detach().reshape(-1)
    return _Part(int(flat.numel()), lambda s, c: _numpy_of(torch, flat[s:s + c]))


def _shape(x, what: str, path: str) -> tuple[int, ...]:
    shape = tuple(x) if isinstance(x, (tuple, list)) else tuple(getattr(x, "shape", ())) if x is not None else None
    if shape is None or not all(type(d) is int and d >= 0 for d in shape):
        raise ModelLoadError(f"{what}: the shape {printable(repr(x)[:60])} is not a list of sizes", path)
    return shape


def read_deepspeed(path: str, trust: bool = False) -> WeightSet:
    """A DeepSpeed ZeRO-1/2/3 checkpoint folder (the top folder with `latest`, or a `global_stepN/`):
    its fp32 weights reassembled from the optimizer partitions as `zero_to_fp32.py` does, each tensor
    read from its pieces on `load()`. Read by the restricted unpickler (DeepSpeed's records as plain
    dicts), or by `torch.load` (memory-mapped) under `trust`."""
    folder = deepspeed_tag_folder(path, os.listdir(path))
    if folder is None:
        raise ModelLoadError("not a DeepSpeed checkpoint folder (no '*_optim_states.pt' files, no 'latest' tag)", path)
    names = sorted(os.listdir(folder), key=_natural)
    optim = [n for n in names if n.endswith(_OPTIM)]
    models = [n for n in names if n.endswith(_MODEL)]
    if not models:
        raise ModelLoadError(f"DeepSpeed checkpoint '{printable(os.path.basename(folder))}' has optimizer partitions "
                             "but no '*_model_states.pt' (its parameter shapes)", path)
    if trust:
        torch = _torch()

        def load(name):
            return _torch_load(torch, model_member(folder, name, "DeepSpeed file", ModelLoadError), mmap=True)
        is_tensor = lambda v: isinstance(v, torch.Tensor)  # noqa: E731
        part = lambda t, what, _f: _torch_part(torch, t)  # noqa: E731
        whole = lambda t, _f: (lambda: _numpy_of(torch, t))  # noqa: E731
    else:
        def load(name):
            file = model_member(folder, name, "DeepSpeed file", ModelLoadError)
            z = zip_archive(zipfile.ZipFile(file), file) if zipfile.is_zipfile(file) else None
            if z is None:
                raise ModelLoadError(f"'{printable(name)}' is not a torch zip checkpoint (DeepSpeed writes one)", path)
            pkl = next((n for n in z.namelist() if n.endswith("data.pkl")), None)
            if pkl is None:
                raise ModelLoadError(f"'{printable(name)}': zip file without data.pkl", path)
            obj = unpickle(io.BytesIO(zip_read(z, pkl, file)), file)
            return _Loaded(obj, _ZipStorages(file, z, pkl[: -len("data.pkl")]))
        is_tensor = lambda v: isinstance(v, TensorRef)  # noqa: E731
        part = lambda ref, what, f: _ref_part(f.storages, ref, what)  # noqa: E731

        def whole(ref, f):
            f.storages.check(ref.storage)
            return _tensor_loader(lambda st, s=f.storages: s.read(st, 0, st.numel), ref)
    return _zero_weights(path, folder, optim, models, load, is_tensor, part, whole)


class _Loaded:
    """A restricted-unpickled DeepSpeed file: its object and the storages its tensors read."""

    def __init__(self, obj, storages: _ZipStorages):
        self.obj, self.storages = obj, storages


def _zero_weights(path, folder, optim, models, load, is_tensor, part, whole) -> WeightSet:
    """The weights of the ZeRO checkpoint in `folder`, its files opened by `load` (restricted or trusted),
    its tensors told by `is_tensor`, a flat tensor as a `_Part` by `part`, a whole one's loader by `whole`."""
    tag = os.path.basename(folder.rstrip(os.sep))

    def obj_of(f):
        return f.obj if isinstance(f, _Loaded) else f

    optim_files = [load(n) for n in optim]
    states = []
    for name, f in zip(optim, optim_files, strict=True):
        sd = obj_of(f).get("optimizer_state_dict") if isinstance(obj_of(f), dict) else None
        if not isinstance(sd, dict) or "zero_stage" not in sd:
            raise ModelLoadError(f"'{printable(name)}' is not a ZeRO optimizer partition (no zero_stage in its "
                                 "optimizer_state_dict)", path)
        states.append(sd)
    stage, world = states[0]["zero_stage"], states[0].get("partition_count")
    if isinstance(world, (list, tuple)):  # one count per param group
        world = max(world) if world and all(type(w) is int for w in world) else world
    stage = int(stage) if isinstance(stage, int) and not isinstance(stage, bool) else stage  # torch.load: the enum
    if type(stage) is not int or stage not in (1, 2, 3) or type(world) is not int or world < 1:
        raise ModelLoadError(f"DeepSpeed checkpoint with zero_stage {printable(repr(stage)[:20])} and partition_count "
                             f"{printable(repr(world)[:20])}: irtools reads ZeRO stages 1-3", path)
    if world != len(optim):
        raise ModelLoadError(f"DeepSpeed ZeRO-{stage} checkpoint of {world} ranks has {len(optim)} '*_optim_states.pt' "
                             "file(s) (an overwritten or partly saved checkpoint)", path)
    key = "single_partition_of_fp32_groups" if stage <= 2 else "fp32_flat_groups"
    groups = []
    for name, f, sd in zip(optim, optim_files, states, strict=True):
        g = sd.get(key)
        if not isinstance(g, (list, tuple)) or not all(is_tensor(t) for t in g):
            raise ModelLoadError(f"'{printable(name)}' has no list of tensors under '{key}'", path)
        groups.append([part(t, f"'{printable(name)}' {key}[{i}]", f) for i, t in enumerate(g)])

    model_name = models[0] if stage <= 2 else next((m for m in models if m.startswith("zero_pp_rank_0_")), models[0])
    model_files = [load(model_name)] if stage <= 2 else [load(m) for m in models]
    first = obj_of(model_files[0])
    if not isinstance(first, dict) or "param_shapes" not in first or "buffer_names" not in first:
        raise ModelLoadError(f"'{printable(model_name)}' is not a DeepSpeed model-states file (no param_shapes, "
                             "buffer_names)", path)
    param_shapes = first["param_shapes"]
    param_shapes = [param_shapes] if isinstance(param_shapes, dict) else param_shapes
    if not isinstance(param_shapes, (list, tuple)) or not all(isinstance(d, dict) for d in param_shapes):
        raise ModelLoadError("the DeepSpeed param_shapes is not a list of {name: shape}", path)
    module = _field(first, "module", dict, "a dict of tensors", model_name, path)
    buffer_names = _field(first, "buffer_names", (list, tuple), "a list of names", model_name, path)
    if not all(isinstance(b, str) for b in buffer_names):
        raise ModelLoadError(f"'{printable(model_name)}': buffer_names is not a list of names (strings)", path)

    out: dict[str, StoredArray] = {}

    def put(name, shape, loader, dtype):
        from irtools import budget  # noqa: PLC0415

        name = str(name)
        budget.check_shape(shape, np.dtype(dtype).itemsize, f"tensor '{printable(name)}'", path)
        _unique_names(out, {name: None}, "", path)  # a buffer and a parameter, keys 1 and "1"
        out[name] = StoredArray(tuple(shape), np.dtype(dtype), loader)

    for name in buffer_names:  # buffers are whole in the module's state (zero_to_fp32 makes them fp32)
        t = module.get(name)
        if is_tensor(t):
            put(name, tuple(t.shape), _as_float32(whole(t, model_files[0])), np.float32)

    frozen = _field(first, "frozen_param_shapes", dict, "a dict of {name: shape}", model_name, path)
    fragments = [_field(obj_of(m), "frozen_param_fragments", dict, "a dict of {name: tensor}", n, path) if frozen
                 else {} for m, n in zip(model_files, [model_name] if stage <= 2 else models, strict=True)]
    for name, shape in frozen.items():
        shape = _shape(shape, f"frozen parameter '{printable(name)}'", path)
        frags = [f.get(name) if isinstance(name, (str, int)) else None for f in fragments]
        if not all(is_tensor(t) for t in frags):
            raise ModelLoadError(f"frozen parameter '{printable(name)}' has no fragment in a model-states file", path)
        pieces = _Part.joined([part(t, f"frozen '{printable(name)}'", m)
                               for t, m in zip(frags, model_files, strict=True)])
        if pieces.length < math.prod(shape):
            raise ModelLoadError(f"frozen parameter '{printable(name)}' of shape {list(shape)} has {pieces.length} "
                                 "elements in its fragments (not this checkpoint's shapes)", path)
        put(name, shape, _piece_loader(pieces, 0, math.prod(shape), shape, path, name), pieces.read(0, 0).dtype)

    dtypes = {p.read(0, 0).dtype for g in groups for p in g}
    if len(dtypes) > 1:
        raise ModelLoadError(f"DeepSpeed ZeRO-{stage}: the ranks' fp32 partitions are of {len(dtypes)} dtypes "
                             f"({', '.join(sorted(str(d) for d in dtypes))}; one checkpoint has one)", path)
    dtype = dtypes.pop() if dtypes else np.dtype(np.float32)
    if stage <= 2:
        if any(len(g) != len(groups[0]) for g in groups) or len(param_shapes) != len(groups[0]):
            raise ModelLoadError(f"DeepSpeed ZeRO-{stage}: {len(param_shapes)} param group(s) of shapes, but "
                                 f"{sorted({len(g) for g in groups})} fp32 partition(s) per rank", path)
        align = 2 * world
        for i, shapes in enumerate(param_shapes):
            full = _Part.joined([g[i] for g in groups])
            offset = 0
            for name, shape in shapes.items():
                shape = _shape(shape, f"parameter '{printable(name)}'", path)
                n = math.prod(shape)
                put(name, shape, _piece_loader(full, offset, n, shape, path, name), dtype)
                offset += n
            if align * math.ceil(offset / align) != align * math.ceil(full.length / align):
                raise ModelLoadError(f"DeepSpeed ZeRO-{stage} param group {i}: the shapes take {offset} elements, its "
                                     f"partitions hold {full.length} (not this checkpoint's shapes)", path)
    else:
        flats = [_Part.joined(g) for g in groups]
        if len({f.length for f in flats}) != 1:
            raise ModelLoadError("DeepSpeed ZeRO-3: the ranks' fp32 partitions differ in size", path)
        offset = 0
        for shapes in param_shapes:
            for name, shape in shapes.items():
                shape = _shape(shape, f"parameter '{printable(name)}'", path)
                n = math.prod(shape)
                per = math.ceil(n / world)
                if offset + per > flats[0].length:
                    raise ModelLoadError(f"DeepSpeed ZeRO-3: parameter '{printable(name)}' runs past the partitions "
                                         f"({flats[0].length} elements per rank)", path)
                pieces = _Part.joined([_Part(per, (lambda s, c, f=f, o=offset: f.read(o + s, c))) for f in flats])
                put(name, shape, _piece_loader(pieces, 0, n, shape, path, name), dtype)
                offset += per
        if offset * world != flats[0].length * world:
            raise ModelLoadError(f"DeepSpeed ZeRO-3: the shapes take {offset * world} elements, the partitions hold "
                                 f"{flats[0].length * world} (not this checkpoint's shapes)", path)

    # zero_to_fp32 gives a shared (tied) parameter its partner's tensor; one parameter is one row here
    shared = first.get("shared_params") or {}
    tied = [f"{printable(n)} = {printable(p)}" for n, p in (shared.items() if isinstance(shared, dict) else [])
            if str(p) in out and str(n) not in out]
    if not out:
        raise ModelLoadError(f"DeepSpeed checkpoint '{printable(tag)}' holds no parameter shapes", path)
    flat, notes = _strip_wrappers(out, lightning=False, path=path)
    notes.insert(0, f"DeepSpeed ZeRO-{stage} checkpoint '{printable(tag)}' of {world} rank(s): the fp32 weights "
                    f"reassembled from the optimizer partitions as DeepSpeed's zero_to_fp32.py does, each tensor read "
                    f"from its own pieces ({len(flat)} tensors; the 16-bit module copy is not read)")
    if tied:
        notes.append(f"shared (tied) parameters read once, under their partner's name: {', '.join(tied[:6])}"
                     + (", ..." if len(tied) > 6 else ""))
    return _result(flat, notes)


def _field(record: dict, key: str, types, what: str, file: str, path: str):
    """`record[key]` of a DeepSpeed file where it is of `types` (missing or None: an empty one), else one
    line naming the file and the field (its wrong type made the reader fail on Python's own message)."""
    value = record.get(key)
    if value is None:
        return (types[0] if isinstance(types, tuple) else types)()
    if not isinstance(value, types):
        kind = type(value).__name__
        raise ModelLoadError(f"'{printable(file)}': {key} is {'an' if kind[:1] in 'aeiou' else 'a'} {kind}, not {what}",
                             path)
    return value


def _piece_loader(part: _Part, start: int, n: int, shape, path: str, name: str):
    def load():
        values = part.read(start, n)
        if values.size != n:
            raise ModelLoadError(f"tensor '{printable(name)}' got {values.size} of its {n} elements (corrupt "
                                 "checkpoint)", path)
        return values.reshape(shape)
    return load


def _as_float32(load):
    def f():
        return np.asarray(load()).astype(np.float32)  # zero_to_fp32: every buffer `.float()`
    return f
