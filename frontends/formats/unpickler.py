"""The restricted unpickler: the only code in irtools that unpickles an untrusted file, kept alone
here for security review.

PyTorch checkpoints (the zip format's `data.pkl`, the legacy format's five pickles) are pickles.
Unpickling runs whatever globals a pickle names, so a file is never given to `pickle.load`:

- `scan_pickle` first walks the opcodes without running them and refuses a pickle nested deeper
  than `PICKLE_MAX_DEPTH`, one that would build more than `PICKLE_MAX_OBJECTS` objects once
  shared references are expanded ("billion laughs"), one that sets a memo slot past
  `PICKLE_MAX_MEMO` or past the number of memo writes before it (the C unpickler sizes its memo
  table by the largest slot: one PUT of slot 10^7 was 160 MB), or one that keys more than
  `PICKLE_MAX_HASHED` dict entries or set members by values whose hash a file can choose (ints of
  61 bits or more, tuples, frozensets, objects: equal hashes make building the dict quadratic,
  60,000 keys took 22 s); the scan's own memory is a pointer per stack slot (shared leaves);
- `RestrictedUnpickler` then resolves only the globals in `ALLOWED` (ordered dicts, sets, the tensor
  rebuild functions, storage type tags, and the plain records training checkpoints hold: argparse
  and Lightning hyper-parameters, DeepSpeed's ZeRO stage, loss scaler and fragment addresses, each
  rebuilt as an int or a dict, nothing of their classes run or imported): tensors come back as
  `TensorRef`s over `Storage` descriptions (key, dtype, element count, checked against the memory
  budget), never as torch objects, so torch is not even imported. Every other global is refused with one line that
  names it and says `--trust` allows it (then `torch.load` does the full unpickling, in the
  PyTorch reader, never here);
- every view is checked against its storage (`check_view`): no negative offset, size or stride,
  shape and stride of one length, no element past the storage's end.

Nothing else in the package may call `pickle.load`/`pickle.loads` (tests/test_layout.py's
reviewers grep for it).
"""

from __future__ import annotations

import math
import pickle
import pickletools
import warnings
from collections import OrderedDict
from dataclasses import dataclass

import ml_dtypes
import numpy as np

from irtools import budget
from irtools.errors import printable

TORCH_STORAGES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "BFloat16Storage": ml_dtypes.bfloat16, "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}


@dataclass(slots=True)
class Storage:
    key: str
    dtype: np.dtype
    numel: int


@dataclass(slots=True)
class TensorRef:
    storage: Storage
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]


#: Limits on a pickle before it is unpickled: nesting depth, objects once shared references are
#: expanded (a "billion laughs" shares halves to double its size per level), and memo slots.
PICKLE_MAX_DEPTH = 100
PICKLE_MAX_OBJECTS = 20_000_000
PICKLE_MAX_MEMO = 10_000_000
#: Dict keys and set members whose hash a pickle can choose (see `scan_pickle`), per pickle.
PICKLE_MAX_HASHED = 10_000
#: Opcodes of one pickle (the scan walked 15 million in 24 s; leaves left on the stack build nothing
#: the object count sees): a state dict takes ~30 a tensor.
PICKLE_MAX_OPCODES = 40_000_000
#: Python hashes an int modulo this prime: ints below it in magnitude hash apart (bar -1 and -2).
_HASH_MODULUS = (1 << 61) - 1
_MAX_NDIM = 32


def _int_tuple(x, what: str) -> tuple[int, ...]:
    if not isinstance(x, (tuple, list)) or not all(type(v) is int for v in x):
        raise pickle.UnpicklingError(f"tensor {what} is not a tuple of integers")
    return tuple(x)


def _rebuild_tensor(storage, offset, size, stride, *args):
    if not isinstance(storage, Storage) or type(offset) is not int:
        raise pickle.UnpicklingError("a tensor is rebuilt from something that is not a storage and an offset")
    return check_view(TensorRef(storage, offset, _int_tuple(size, "size"), _int_tuple(stride, "stride")))


def check_view(ref: TensorRef) -> TensorRef:
    """Refuse a view that reads outside its storage: negative offset, sizes or strides, shape and
    stride of different lengths, or a last element past the storage's end."""
    shape, stride, st = ref.shape, ref.stride, ref.storage
    if len(shape) != len(stride) or len(shape) > _MAX_NDIM:
        raise pickle.UnpicklingError(f"tensor of size {list(shape)} has strides {list(stride)}")
    if ref.offset < 0 or any(d < 0 for d in shape) or any(s < 0 for s in stride):
        raise pickle.UnpicklingError(f"tensor has a negative offset, size or stride (offset {ref.offset}, size "
                                     f"{list(shape)}, stride {list(stride)})")
    if math.prod(shape) and ref.offset + sum((d - 1) * s for d, s in zip(shape, stride, strict=True)) >= st.numel:
        raise pickle.UnpicklingError(f"tensor of size {list(shape)}, stride {list(stride)} at offset {ref.offset} "
                                     f"reads past the end of its storage of {st.numel} elements")
    return ref


def _rebuild_parameter(data, *args):
    return data


def scan_pickle(reader, path: str) -> None:
    """Walk one pickle's opcodes (without running it) and refuse one nested deeper than
    PICKLE_MAX_DEPTH, that would build more than PICKLE_MAX_OBJECTS objects once shared
    references are counted as often as they are used, that sets a memo slot past PICKLE_MAX_MEMO
    or past the count of memo writes before it (a pickler numbers its slots 0, 1, 2, ...), or that
    keys more than PICKLE_MAX_HASHED dict entries or set members by values of a chosen hash.
    Leaves `reader` where it was.

    Each stack item is [depth, objects, hash chosen]; values without children share one item
    each, so the scan holds a pointer per stack slot, not an object (15 million leaves took 1.4 GB)."""
    start = reader.tell()
    stack: list = []  # [depth, objects, hash chosen] per stack item; None for a mark
    memo: dict = {}
    writes = hashed = 0
    in_place = {"APPEND", "APPENDS", "SETITEM", "SETITEMS", "ADDITEMS", "BUILD"}
    for ops, (op, arg, _) in enumerate(pickletools.genops(reader)):
        if ops >= PICKLE_MAX_OPCODES:
            raise pickle.UnpicklingError(f"pickle of more than {PICKLE_MAX_OPCODES} opcodes: refused")
        name = op.name
        if name in ("PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE"):
            key = len(memo) if name == "MEMOIZE" else int(arg)
            if key > PICKLE_MAX_MEMO or key > writes:
                raise pickle.UnpicklingError(f"pickle memo slot {key} is out of range (a pickler numbers its slots "
                                             f"in order: {writes} written before it, at most {PICKLE_MAX_MEMO})")
            if not stack or stack[-1] is None:
                raise pickle.UnpicklingError("pickle memoizes with nothing on the stack")
            memo[key] = stack[-1]
            writes += 1
            continue
        if name in ("GET", "BINGET", "LONG_BINGET"):
            if int(arg) not in memo:
                raise pickle.UnpicklingError(f"pickle reads memo slot {arg}, which was never set")
            stack.append(memo[int(arg)])
            continue
        if name == "MARK":
            stack.append(None)
            continue
        if name == "STOP":  # it returns the top of the stack: a mark there was pickle's "unexpected MARK found"
            if not stack or stack[-1] is None:
                raise pickle.UnpicklingError(f"pickle stops with {'a mark' if stack else 'nothing'} on top of its "
                                             "stack (no value to return)")
            break
        popped = _pop(stack, op)
        if name == "DUP":
            stack.extend(popped * 2)
            continue
        if name in ("SETITEM", "SETITEMS", "ADDITEMS", "FROZENSET", "DICT"):
            keys = popped[1:][::2] if name in ("SETITEM", "SETITEMS") else popped[1:] if name == "ADDITEMS" \
                else popped[::2] if name == "DICT" else popped
            hashed += sum(1 for k in keys if k[2])
            if hashed > PICKLE_MAX_HASHED:
                raise pickle.UnpicklingError(f"pickle keys more than {PICKLE_MAX_HASHED} dict entries or set members "
                                             "by ints of 61 bits or more, tuples or objects (keys of equal hash "
                                             "make it quadratic to build): refused")
        kind = op.stack_after[0].name if op.stack_after else None
        if not popped and kind in _IMMUTABLE:  # a value of its own: one shared item per kind
            stack.append(_BIG_INT if kind in ("int", "int_or_bool") and isinstance(arg, int)
                         and abs(arg) >= _HASH_MODULUS else _CHOSEN if _IMMUTABLE[kind] else _LEAF)
            continue
        if name in in_place:
            item, children = popped[0], popped[1:]
            if item is _LEAF or item is _BIG_INT or item is _CHOSEN:  # never grow a shared item
                item = list(item)
        else:
            item, children = [0, 1, _IMMUTABLE.get(kind, False)], popped
        if children:
            item[0] = max(item[0], 1 + max(c[0] for c in children))
            item[1] += sum(c[1] for c in children)
        if item[0] > PICKLE_MAX_DEPTH:
            raise pickle.UnpicklingError(f"pickle nests objects more than {PICKLE_MAX_DEPTH} deep")
        if item[1] > PICKLE_MAX_OBJECTS:
            raise pickle.UnpicklingError(f"pickle would build more than {PICKLE_MAX_OBJECTS} objects (shared "
                                         "references expanded): refused")
        if op.stack_after:
            stack.append(item)
    else:
        raise pickle.UnpicklingError("pickle data was truncated (no STOP)")
    reader.seek(start)


#: Shared scan items of values without children: one whose hash the file cannot choose, an int
#: of 61 bits or more (Python hashes ints modulo 2^61 - 1), a global or other value of any kind.
_LEAF, _BIG_INT, _CHOSEN = [0, 1, False], [0, 1, True], [0, 1, True]
#: The pickletools stack kinds of values that never grow in place (their scan items may be shared), by
#: whether the file can choose their hash (tuples, frozensets, objects; ints are judged by their size).
#: Lists, dicts and sets grow in place and are not hashable: each has an item of its own.
_IMMUTABLE = {"int": False, "int_or_bool": False, "bool": False, "float": False, "None": False, "str": False,
              "bytes": False, "bytes_or_str": False, "bytearray": False, "buffer": False, "tuple": True,
              "frozenset": True, "any": True}


def _hashed_safely(items, what: str) -> list:
    """`items` as a list, refused where more than PICKLE_MAX_HASHED of them hash as the file chooses."""
    items = list(items)
    chosen = sum(1 for x in items if not (isinstance(x, (str, bytes, float, bool)) or x is None or
                                          (isinstance(x, int) and abs(x) < _HASH_MODULUS)))
    if chosen > PICKLE_MAX_HASHED:
        raise pickle.UnpicklingError(f"pickle builds a {what} of more than {PICKLE_MAX_HASHED} ints of 61 bits or "
                                     "more, tuples or objects (members of equal hash make it quadratic): refused")
    return items


def _set(items=()):
    return set(_hashed_safely(items, "set"))


def _frozenset(items=()):
    return frozenset(_hashed_safely(items, "set"))


def _ordered_dict(*args):
    if args and not isinstance(args[0], dict):
        pairs = list(args[0])
        _hashed_safely((p[0] for p in pairs if isinstance(p, (tuple, list)) and p), "dict")
        return OrderedDict(pairs, *args[1:])
    return OrderedDict(*args)


def _pop(stack: list, op) -> list:
    """Pop what `op` consumes: items up to the last mark where it takes a stack slice."""
    before = [s.name for s in op.stack_before]
    out: list = []
    if "mark" in before:
        while stack and stack[-1] is not None:
            out.append(stack.pop())
        if not stack:
            raise pickle.UnpicklingError(f"pickle opcode {op.name} without a mark")
        stack.pop()
        out.reverse()
        below = before.index("mark")
    else:
        below = len(before)
    if len(stack) < below or any(x is None for x in stack[len(stack) - below:]):
        raise pickle.UnpicklingError(f"pickle opcode {op.name} on too short a stack")
    head = stack[len(stack) - below:] if below else []
    del stack[len(stack) - below:]
    return head + out


class MapReader:
    """A read-only file-like view of an mmap for the unpickler: reads past the end return what is
    left (never an allocation of the length a pickle claims)."""

    def __init__(self, buf):
        self.buf, self.pos = buf, 0

    def read(self, n: int = -1) -> bytes:
        end = len(self.buf) if n is None or n < 0 else min(len(self.buf), self.pos + n)
        data = self.buf[self.pos:end]
        self.pos = end
        return data

    def readline(self) -> bytes:
        end = self.buf.find(b"\n", self.pos)
        end = len(self.buf) if end < 0 else end + 1
        data = self.buf[self.pos:end]
        self.pos = end
        return data

    def tell(self) -> int:
        return self.pos

    def seek(self, pos: int, whence: int = 0) -> int:
        self.pos = pos if whence == 0 else self.pos + pos if whence == 1 else len(self.buf) + pos
        return self.pos


class Record(dict):
    """What a training checkpoint's plain records (`argparse.Namespace` hyper-parameters, Lightning's
    `AttributeDict`) become: a dict of their items and attributes. Nothing of the named class runs."""

    def __setstate__(self, state):
        if isinstance(state, dict):
            self.update(state)


#: torch dtype names a checkpoint may store as globals (`torch.float32`): kept as their names.
TORCH_DTYPES = frozenset(
    "float32 float64 float16 bfloat16 int64 int32 int16 int8 uint8 bool complex64 complex128 float8_e4m3fn "
    "float8_e5m2 float".split())


class RestrictedUnpickler(pickle.Unpickler):
    """Rebuilds tensors, dicts and plain records only; every other global is refused."""

    ALLOWED = {
        ("collections", "OrderedDict"): _ordered_dict,
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
        ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
        ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
        ("torch", "Size"): tuple,  # DeepSpeed's param_shapes: Size(list) is the tuple of the list
        ("argparse", "Namespace"): Record,
        ("lightning.fabric.utilities.data", "AttributeDict"): Record,
        ("lightning_fabric.utilities.data", "AttributeDict"): Record,
        ("pytorch_lightning.utilities.parsing", "AttributeDict"): Record,
        # a set (DeepSpeed's sparse_tensor_module_names): protocol 2 names the builtin, under Python 2's name
        ("builtins", "set"): _set, ("__builtin__", "set"): _set,
        ("builtins", "frozenset"): _frozenset, ("__builtin__", "frozenset"): _frozenset,
        **{key: int for key in (("deepspeed.runtime.zero.config", "ZeroStageEnum"),)},  # the ZeRO stage: its int
        # DeepSpeed's records beside a ZeRO checkpoint's tensors: their attributes as plain dicts
        **{(module, name): Record for module, name in (
            ("deepspeed.runtime.fp16.loss_scaler", "LossScaler"),
            ("deepspeed.runtime.fp16.loss_scaler", "DynamicLossScaler"),
            ("deepspeed.utils.tensor_fragment", "fragment_address"),
        )},
    }

    def __init__(self, fh, path):
        super().__init__(fh)
        self.path = path

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return self.ALLOWED[(module, name)]
        if module == "torch" and (name in TORCH_STORAGES or name in TORCH_DTYPES):
            return name  # a storage type tag (used in persistent ids) or a dtype: its name
        raise pickle.UnpicklingError(f"refused to unpickle {printable(module)}.{printable(name)} (pass --trust to "
                                     "allow arbitrary objects)")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"a persistent id that is not a storage: {printable(repr(pid)[:80])}")
        _, storage_type, key, _location, numel = pid[:5]
        dtype = TORCH_STORAGES.get(storage_type) if isinstance(storage_type, str) else None
        if dtype is None:
            raise pickle.UnpicklingError(f"unsupported storage type {printable(repr(storage_type)[:80])}")
        if type(numel) is not int or numel < 0 or not isinstance(key, (str, int)):
            raise pickle.UnpicklingError(f"storage {printable(repr(key)[:40])} has an invalid size {numel!r}")
        budget.check(numel * np.dtype(dtype).itemsize, f"storage '{printable(key)}'", self.path)
        return Storage(str(key), np.dtype(dtype), numel)


def unpickle(reader, path: str):
    """One restricted pickle from `reader`, scanned first (`scan_pickle`). A protocol-0 string with an escape
    Python does not know (`S'\\Â'`) is read as pickle reads it, without the DeprecationWarning that both the
    scan (pickletools) and the unpickler would print about the file's bytes (a second line on stderr)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", SyntaxWarning)  # what later Pythons may raise for the same escapes
        scan_pickle(reader, path)
        return RestrictedUnpickler(reader, path).load()
