"""GGUF (llama.cpp's format), read through the `gguf` package (the llama.cpp project's own
Python code): its type table (`GGML_QUANT_SIZES`), its dequantizer (`gguf.quants.dequantize`,
every type it implements) and its tensor-name map (`gguf.get_tensor_name_map`) to give tensors
their Hugging Face names back.

The header is parsed here first, every count and length checked against the bytes left in the
file before anything is built (gguf's own reader would size arrays from the counts a file
declares: a metadata array of 2^40 entries, a tensor past the end), and its cost kept to the
bytes that matter: a vocabulary's strings walked in compiled code (gguf_meta), the entries parsed
in Python, the strings decoded and the tensors, blocks and experts made into objects capped (the
caps below say why each is safe). Tensors are read and
dequantized one at a time, in bands of rows, into one float32 array: the full tensor is the
only large allocation (gguf's whole-tensor call holds a second copy while it joins rows, and a
memory map of the tensor would keep its pages resident). Big-endian files (gguf's writer with
GGUFEndian.BIG, llama.cpp's s390x files) are read in their byte order: the plain types and the
block types gguf's own gguf_convert_endian.py converts; another block type is skipped by name.
"""

from __future__ import annotations

import collections
import math
import mmap
import os
import re
import struct

import numpy as np

from irtools import budget
from irtools.errors import ModelLoadError, UnsupportedError, printable
from irtools.frontends import require

from . import gguf_meta
from .common import StoredArray, WeightSet

MAGIC = b"GGUF"
MISSING = "reading GGUF files needs the gguf package: pip install irtools[gguf]"
MAX_DIMS = 4  # GGML_MAX_DIMS
#: Metadata arrays longer than this are kept as their length only (tokenizer vocabularies).
_KEEP_ITEMS = 16
_MAX_NESTING = 3
#: Metadata entries (key-value pairs, and the items of arrays of arrays) parsed into Python objects, at
#: most: each one costs the parser a Python-level step (~1 us) and a few hundred bytes however few bytes
#: of the file it takes (13), so a count the file's size allows (10^8 in 1.3 GB) ran for minutes. Safe:
#: llama.cpp's converter writes 20-60 keys (a tokenizer's vocabulary is one array, walked in compiled
#: code, not counted here), and llama.cpp's own reader (gguf.cpp) refuses arrays of arrays altogether.
_MAX_ENTRIES = 1 << 16
#: Tensors a file may declare: each is a Python object and a row of the analysis. Safe: the largest
#: released models hold a few thousand tensors (Llama 3.1 405B: 1138; DeepSeek-V3, experts merged: 1025;
#: an unmerged 128-expert Arctic: ~13,500).
_MAX_TENSORS = 1 << 16
#: Strings of metadata (keys, values, the first items of an array) are decoded into Python only up to
#: this many bytes (a longer key is parsed and dropped, a longer value kept as {"string_of": bytes}):
#: irtools reads only short keys and values (architecture, name, counts); a decoded string may take up
#: to 4 times its bytes (an invalid byte becomes `\xNN`).
_KEEP_BYTES = 1 << 16
#: ... and up to this many bytes in all, for the metadata (past it a value is kept as its length, a key
#: dropped) and again for the tensor names (past it a name is refused), so the decoded strings stay a
#: bounded few times this whatever the file's size. Safe: a real file's keys, short values and kept
#: tokens take under 1 MB, its tensor names under 4 MB (65536 names of 64 bytes).
_KEEP_TOTAL = 1 << 25
#: Keys of up to this many bytes are decoded whatever the total (at most _MAX_ENTRIES of them: 16 MiB),
#: so no string before it can hide a key irtools reads (general.alignment) from the parser.
_KEY_BYTES = 256
#: Expert stacks (`ffn_gate_exps`) are split into one matrix per expert only up to these many experts each
#: and in all, and only when they hold data: 2^40 experts of no bytes made 2^40 Python objects. Safe: the
#: most experts per layer released is 512 (Qwen3-Next), the most matrices split in a file ~74k (its 48 layers
#: x 512 x 3; DeepSeek-V3 44.5k, Kimi K2 69k).
_MAX_EXPERTS = 1 << 12
_MAX_SPLIT = 1 << 18
#: Blocks (`blk.N.`) that gguf's tensor-name map is built for: it costs ~0.4 ms and 270 entries per block,
#: so a name `blk.1000000000000000000.attn_q.weight` built it for ever. Safe: the deepest released LLMs
#: have 126-200 blocks; names of blocks past it keep their GGUF names.
_MAX_BLOCKS = 1 << 10
#: (struct code, size) of the scalar metadata types, by GGUFValueType id.
_SCALARS = {0: ("B", 1), 1: ("b", 1), 2: ("H", 2), 3: ("h", 2), 4: ("I", 4), 5: ("i", 4), 6: ("f", 4),
            7: ("?", 1), 10: ("Q", 8), 11: ("q", 8), 12: ("d", 8)}
_STRING, _ARRAY = 8, 9
#: Bytes of float32 output dequantized per call (gguf's temporaries are a few times its band's output: with
#: bands of 16 MB of input, a Q4_0 matrix peaked 115 MB above its output; with 4 MB of output, about 15).
_BAND_BYTES = 4 << 20


def looks_like(head: bytes) -> bool:
    return head.startswith(MAGIC)


class _Header:
    """A bounds-checked cursor over the file's bytes."""

    def __init__(self, buf, path: str, order: str = "<"):
        self.buf, self.pos, self.path, self.size, self.order = buf, 0, path, len(buf), order
        self.entries = 0  # key-value pairs and items of arrays of arrays parsed (at most _MAX_ENTRIES)
        self.scanned = 0  # array strings walked in Python (gguf_meta.PY_STRINGS, then compiled)
        self.kept = 0  # bytes of strings decoded (at most _KEEP_TOTAL)

    def need(self, n: int, what: str) -> None:
        if n < 0 or self.pos + n > self.size:
            raise ModelLoadError(f"truncated GGUF file: {what} needs {n} bytes at byte {self.pos}, the file has "
                                 f"{self.size}", self.path)

    def scalar(self, code: str, size: int, what: str):
        self.need(size, what)
        (v,) = struct.unpack_from(self.order + code, self.buf, self.pos)
        self.pos += size
        return v

    def u32(self, what: str) -> int:
        return self.scalar("I", 4, what)

    def u64(self, what: str) -> int:
        return self.scalar("Q", 8, what)

    def string(self, what: str, keep: bool = True, free: int = 0) -> str | dict | None:
        """The string at the cursor, decoded where it is within _KEEP_BYTES and the total (strings of up to
        `free` bytes: always, outside the total), else {"string_of": its bytes}."""
        n = self.u64(what)
        self.need(n, what)
        keep = keep and n <= _KEEP_BYTES and (n <= free or self.kept + n <= _KEEP_TOTAL)
        self.kept += n if keep and n > free else 0
        raw = bytes(self.buf[self.pos:self.pos + n]) if keep else None
        self.pos += n
        return raw.decode("utf-8", "backslashreplace") if keep else {"string_of": n}

    def skip_strings(self, count: int, what: str) -> None:
        """Past `count` strings of an array, none decoded (gguf_meta: compiled once a file has many)."""
        if count <= 0:
            return
        walk = gguf_meta.skip_strings_py if self.scanned + count <= gguf_meta.PY_STRINGS else gguf_meta.skip_strings
        self.scanned += count
        end = walk(self.buf, self.pos, count, self.order == ">")
        if end < 0:
            raise ModelLoadError(f"truncated GGUF file: {what} holds strings that run past the end of the file "
                                 f"({self.size} bytes)", self.path)
        self.pos = end

    def entry(self, what: str, n: int = 1) -> None:
        self.entries += n
        if self.entries > _MAX_ENTRIES:
            raise ModelLoadError(f"{what}: the metadata holds more than {_MAX_ENTRIES} entries (key-value pairs and "
                                 "items of arrays of arrays; real files hold under a hundred)", self.path)

    def value(self, vtype: int, what: str, depth: int = 0):
        if vtype in _SCALARS:
            return self.scalar(*_SCALARS[vtype], what)
        if vtype == _STRING:
            return self.string(what)
        if vtype != _ARRAY:
            raise ModelLoadError(f"{what} has unknown metadata type {vtype}", self.path)
        if depth >= _MAX_NESTING:
            raise ModelLoadError(f"{what} nests arrays more than {_MAX_NESTING} deep", self.path)
        itype = self.u32(what)
        count = self.u64(what)
        least = _SCALARS[itype][1] if itype in _SCALARS else 8 if itype in (_STRING, _ARRAY) else None
        if least is None:
            raise ModelLoadError(f"{what} is an array of unknown metadata type {itype}", self.path)
        if count * least > self.size - self.pos:
            raise ModelLoadError(f"{what} declares an array of {count} entries, more than the "
                                 f"{self.size - self.pos} bytes left in the file hold (corrupt file)", self.path)
        if itype in _SCALARS:
            code, size = _SCALARS[itype]
            kept = list(struct.unpack_from(f"{self.order}{min(count, _KEEP_ITEMS)}{code}", self.buf, self.pos))
            self.pos += count * size
            return kept if count <= _KEEP_ITEMS else {"array_of": count}
        if itype == _STRING:
            kept = [self.string(what) for _ in range(min(count, _KEEP_ITEMS))]
            self.skip_strings(count - len(kept), what)
            return kept if count <= _KEEP_ITEMS else {"array_of": count}
        self.entry(what, count)  # arrays of arrays: one Python step each
        kept = []
        for i in range(count):
            item = self.value(itype, what, depth + 1)
            if i < _KEEP_ITEMS:
                kept.append(item)
        return kept if count <= _KEEP_ITEMS else {"array_of": count}


def _gguf():
    return require("gguf", missing=MISSING)


def parse(buf, path: str) -> tuple[dict, list[dict], int]:
    """(metadata, tensor infos, data start) of a GGUF file's bytes, every field checked."""
    gguf = _gguf()
    h = _Header(buf, path)
    h.need(4, "the magic")
    if bytes(buf[:4]) != MAGIC:
        raise ModelLoadError("not a GGUF file (no GGUF magic)", path)
    h.pos = 4
    version = h.u32("the version")
    if version & 0xFFFF == 0 and version:  # a big-endian file (gguf's writer with GGUFEndian.BIG, s390x builds)
        h.order, version = ">", struct.unpack(">I", struct.pack("<I", version))[0]
    if version not in (2, 3):
        raise UnsupportedError(f"GGUF version {version} (irtools reads versions 2 and 3)", path)
    n_tensors, n_kv = h.u64("the tensor count"), h.u64("the metadata count")
    if n_kv * 12 > h.size - h.pos or n_tensors * 24 > h.size - h.pos:
        raise ModelLoadError(f"the header declares {n_tensors} tensors and {n_kv} metadata entries, more than the "
                             f"{h.size} bytes of the file hold (corrupt file)", path)
    if n_kv > _MAX_ENTRIES or n_tensors > _MAX_TENSORS:
        raise ModelLoadError(f"the header declares {n_tensors} tensors and {n_kv} metadata entries; irtools reads at "
                             f"most {_MAX_TENSORS} tensors and {_MAX_ENTRIES} entries (real files hold a few "
                             "thousand tensors and under a hundred entries)", path)
    meta: dict = {}
    for _ in range(n_kv):
        h.entry("a metadata key")
        key = h.string("a metadata key", free=_KEY_BYTES)  # short keys always: general.alignment is one
        label = f"metadata '{printable(key)[:200]}'" if isinstance(key, str) else \
            f"a metadata key of {key['string_of']} bytes"
        value = h.value(h.u32(label), label)
        if isinstance(key, str):  # a key longer than _KEEP_BYTES is none irtools reads: dropped
            if key in meta:  # as llama.cpp's gguf.cpp refuses it (which value would be meant?)
                raise ModelLoadError(f"{label} appears twice", path)
            meta[key] = value
    types = {int(t): t for t in gguf.GGMLQuantizationType}
    tensors, names = [], set()
    h.kept = 0  # the tensor names' own budget of decoded bytes
    for _ in range(n_tensors):
        name = h.string("a tensor name")
        if not isinstance(name, str):
            raise ModelLoadError(f"a tensor name of {name['string_of']} bytes, past the {_KEEP_BYTES} bytes of one "
                                 f"name or {_KEEP_TOTAL} of all names irtools reads (llama.cpp's names are at most "
                                 "64)", path)
        label = f"tensor '{printable(name)}'"
        if name in names:
            raise ModelLoadError(f"{label} is declared twice", path)
        names.add(name)
        n_dims = h.u32(label)
        if not 1 <= n_dims <= MAX_DIMS:
            raise ModelLoadError(f"{label} has {n_dims} dimensions (GGUF allows 1 to {MAX_DIMS})", path)
        ne = [h.u64(label) for _ in range(n_dims)]
        type_id, offset = h.u32(label), h.u64(label)
        qtype = types.get(type_id)
        if qtype is None or qtype not in gguf.GGML_QUANT_SIZES:
            raise ModelLoadError(f"{label} has unknown GGML type id {type_id}", path)
        block, type_size = gguf.GGML_QUANT_SIZES[qtype]
        if ne[0] % block:
            raise ModelLoadError(f"{label}: its rows of {ne[0]} are not whole {qtype.name} blocks of {block}", path)
        shape = tuple(reversed(ne))
        budget.check_shape(shape, 4, label, path)
        nbytes = math.prod(ne[1:]) * (ne[0] // block) * type_size
        tensors.append({"name": name, "shape": shape, "qtype": qtype, "offset": offset, "nbytes": nbytes,
                        "order": h.order})
    alignment = meta.get("general.alignment", 32)
    if type(alignment) is not int or alignment <= 0 or alignment & (alignment - 1) or alignment > 1 << 20:
        raise ModelLoadError(f"general.alignment {printable(repr(alignment))[:40]} is not a power of two from 1 to "
                             "2^20", path)
    start = -(-h.pos // alignment) * alignment
    spans = []
    for t in tensors:
        label = f"tensor '{printable(t['name'])}'"
        if t["offset"] % alignment:
            raise ModelLoadError(f"{label} starts at offset {t['offset']}, not a multiple of the alignment "
                                 f"{alignment}", path)
        end = start + t["offset"] + t["nbytes"]
        if end > h.size:
            raise ModelLoadError(f"{label} lies outside the file (its {t['nbytes']} bytes end at byte {end} of "
                                 f"{h.size})", path)
        spans.append((t["offset"], t["offset"] + t["nbytes"], t["name"]))
    spans.sort()
    for (_, end0, a), (start1, _, b) in zip(spans, spans[1:], strict=False):
        if start1 < end0:
            raise ModelLoadError(f"tensors '{printable(a)}' and '{printable(b)}' overlap in the file "
                                 "(corrupt file)", path)
    return meta, tensors, start


def hf_names(names: list[str], architecture: str | None) -> dict[str, str]:
    """{GGUF name: Hugging Face name} by gguf's own tensor-name map for the architecture (the map
    from each GGUF name to the checkpoint names it is converted from; the Hugging Face naming is
    the one most of the file's tensors share). Names the map does not know stay as they are."""
    gguf = _gguf()
    arch = next((a for a, n in gguf.MODEL_ARCH_NAMES.items() if n == architecture), None)
    if arch is None:
        return {}
    blocks = min(_MAX_BLOCKS, 1 + max((int(n.split(".")[1]) for n in names if n.startswith("blk.") and
                                       _block_id(n.split(".")[1])), default=-1))
    mapping = gguf.get_tensor_name_map(arch, blocks).mapping
    candidates: dict[str, list[str]] = {}
    for key, (_, gname) in mapping.items():
        if key != gname:
            candidates.setdefault(gname, []).append(key)
    stems = {}
    for name in names:
        stem, _, suffix = name.rpartition(".") if name.endswith((".weight", ".bias")) else (name, "", "")
        if stem in candidates:
            stems[name] = (stem, suffix)
    # the naming style: the block prefix ("model.layers.") most of the file's block tensors have a name
    # under (ties: the one listed earliest), and its first part ("model") for the tensors outside blocks
    score: dict[str, list] = {}
    for stem, _ in stems.values():
        seen: set[str] = set()
        for rank, key in enumerate(candidates[stem]):
            prefix = _block_prefix(key)
            if prefix is not None and prefix not in seen:
                seen.add(prefix)
                entry = score.setdefault(prefix, [0, 0])
                entry[0] += 1
                entry[1] -= rank
    best = max(score, key=lambda p: (score[p][0], p == _HF_BLOCKS.get(architecture, "model.layers."), score[p][1])) \
        if score else ""
    root = best.split(".")[0] + "." if "." in best else ""
    # inside a block, the module part ("mlp" or "feed_forward") most of the block's tensors share
    parts: dict[str, list] = {}
    for stem, _ in stems.values():
        seen = set()
        for rank, key in enumerate(candidates[stem]):
            part = _module_part(key, best)
            if part is not None and part not in seen:
                seen.add(part)
                entry = parts.setdefault(part, [0, 0])
                entry[0] += 1
                entry[1] -= rank
    moe_part = _MOE_PART.get(architecture)
    if moe_part in parts and any("_exps" in stem or "_inp" in stem for stem, _ in stems.values()):
        parts[moe_part] = [math.inf, 0]  # Mixtral's experts and router (converted under "llama")
    real = _transformers_names(architecture, blocks) if stems else set()
    commented = _commented_architectures(gguf) if stems else {}
    named = re.compile(re.escape(architecture or "") + r"(\d+b|-hf)?")  # `falcon`, `falcon7b`, `llama-hf`
    out = {}
    for name, (stem, suffix) in stems.items():
        keys = candidates[stem]
        if real and any(k in real for k in keys):
            chosen = next(k for k in keys if k in real)
            out[name] = f"{chosen}.{suffix}" if suffix else chosen
            continue
        # gguf's map says which architecture each checkpoint name is from (its comments): that one first
        own = next((k for k in keys if any(named.fullmatch(w) for w in commented.get(_template(k), ()))), None)
        if own is not None:
            out[name] = f"{own}.{suffix}" if suffix else own
            continue
        stack = "_exps" in stem  # a merged stack of experts: a name of the experts' module before any other
        inside = sorted((k for k in keys if best and _block_prefix(k) == best),
                        key=lambda k: (not stack or ".experts." in k, *parts.get(_module_part(k, best), (0, 0))),
                        reverse=True)
        chosen = next(iter(inside), None) or \
            next((k for k in keys if k in _TOP_LEVEL), None) or \
            next((k for k in keys if root and k.startswith(root) and _block_prefix(k) is None), None) or \
            next((k for k in keys if root and k.startswith(root)), None) or keys[0]
        out[name] = f"{chosen}.{suffix}" if suffix else chosen
    return out


#: Where transformers' blocks are not `model.layers.N` (when the file's tensors fit both namings alike).
_HF_BLOCKS = {"gpt2": "transformer.h.", "gptj": "transformer.h.", "bloom": "transformer.h.", "falcon": "transformer.h.",
              "starcoder": "transformer.h.", "mpt": "transformer.blocks.", "gptneox": "gpt_neox.layers.",
              "bert": "encoder.layer.", "nomic-bert": "encoder.layers.", "codeshell": "transformer.h.",
              "jais": "transformer.h.", "refact": "transformer.h.", "qwen": "transformer.h."}
#: The module part of the experts and router where the architecture's checkpoints have a MoE model under
#: another name than most MoE models' `mlp` (llama.cpp converts Mixtral as "llama"; its checkpoints hold
#: `block_sparse_moe.gate` and `block_sparse_moe.experts.N.w1`).
_MOE_PART = {"llama": "block_sparse_moe"}
#: A merged stack of experts' matrices under its Hugging Face name (`mlp.experts.gate_proj`, what llama.cpp's
#: converter merges `mlp.experts.N.gate_proj` into): read as one matrix per expert under the checkpoint's names.
_MERGED_EXPERTS = re.compile(r"^(?P<stack>.+\.experts)\.(?P<part>[A-Za-z_][^.]*)(?P<suffix>\.weight|\.bias)?$")
#: Names outside any prefix, as transformers' models call them (the output head).
_TOP_LEVEL = ("lm_head", "lm_head.linear", "output", "head")


def _transformers_names(architecture: str, blocks: int) -> set[str]:
    key = (architecture, blocks)
    if key not in _NAMES_CACHE:
        _NAMES_CACHE[key] = _build_transformers_names(architecture, blocks)
    return _NAMES_CACHE[key]


_NAMES_CACHE: dict[tuple, set[str]] = {}


def _build_transformers_names(architecture: str, blocks: int) -> set[str]:
    """The module paths of transformers' own model for the architecture (built on the meta device
    from its default config: no weights, no download), where transformers is installed and knows
    it. Built in a child process, so that the analysis does not hold torch and transformers (about
    300 MB) beside the weights; any failure leaves the choice to gguf's map alone."""
    import importlib.util  # noqa: PLC0415
    import json  # noqa: PLC0415
    import subprocess  # noqa: PLC0415
    import sys  # noqa: PLC0415

    if importlib.util.find_spec("transformers") is None or importlib.util.find_spec("torch") is None:
        return set()
    types = model_types(architecture)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
    try:
        proc = subprocess.run([sys.executable, "-c", _NAMES_CHILD, json.dumps(types), str(max(blocks, 1))],
                              capture_output=True, text=True, timeout=300, env=env, stdin=subprocess.DEVNULL)
        names = json.loads(proc.stdout.strip().splitlines()[-1]) if proc.returncode == 0 and proc.stdout else []
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return set()
    return {str(n) for n in names} if isinstance(names, list) else set()


def model_types(architecture: str) -> list[str]:
    """The transformers model types to try for a GGUF architecture, most likely first."""
    return list(dict.fromkeys((architecture, architecture.replace("moe", "_moe"), architecture.replace("-", "_"),
                               _MODEL_TYPES.get(architecture, architecture))))


#: The child's program: the first model type transformers builds, its parameter and buffer paths.
_NAMES_CHILD = """
import json, logging, sys, warnings
warnings.simplefilter("ignore")
logging.disable(logging.WARNING)
import torch, transformers
for model_type in json.loads(sys.argv[1]):
    try:
        config = transformers.AutoConfig.for_model(model_type, num_hidden_layers=int(sys.argv[2]))
        with torch.device("meta"):
            model = transformers.AutoModelForCausalLM.from_config(config)
    except Exception:
        continue
    print(json.dumps(sorted({n.rsplit(".", 1)[0] for n in model.state_dict()})))
    break
else:
    print("[]")
"""


_MODEL_TYPES = {"gptneox": "gpt_neox", "gpt-oss": "gpt_oss", "command-r": "cohere", "phimoe": "phimoe"}


def _block_id(part: str) -> bool:
    """`part` is a block number irtools maps (ASCII digits, under _MAX_BLOCKS: `²` is a digit to
    str.isdigit that int() refuses; `10^18` would size gguf's map)."""
    return part.isascii() and part.isdigit() and len(part) <= 6 and int(part) < _MAX_BLOCKS


def _template(key: str) -> str:
    """`model.layers.3.self_attn.q_proj` -> `model.layers.{bid}.self_attn.q_proj` (as gguf's map writes it)."""
    parts = key.split(".")
    return ".".join("{bid}" if p.isdigit() else p for p in parts)


_COMMENTED: dict[str, dict[str, frozenset]] = {}


def _commented_architectures(gguf) -> dict[str, frozenset]:
    """{checkpoint name template: the architectures gguf's tensor_mapping.py names beside it} (each
    candidate there carries a comment such as `# falcon` or `# qwen2moe olmoe`): read from the installed
    gguf's own source, so the choice among a tensor's candidates follows gguf's table where transformers
    is not there to say; {} where the source cannot be read."""
    module = getattr(gguf, "tensor_mapping", None)
    source = getattr(module, "__file__", None)
    if source not in _COMMENTED:
        table: dict[str, set] = {}
        try:
            with open(source, encoding="utf-8") as fh:
                for line in fh:
                    m = re.match(r'\s*"([^"]+)"\s*,?\s*#\s*(.*)$', line)
                    if m:
                        table.setdefault(m[1], set()).update(w for w in re.split(r"[\s,()/:;]+", m[2]) if w)
        except (OSError, TypeError, UnicodeDecodeError):
            table = {}
        _COMMENTED[source] = {k: frozenset(v) for k, v in table.items()}
    return _COMMENTED[source]


def _module_part(key: str, prefix: str) -> str | None:
    """`model.layers.3.mlp.up_proj` under `model.layers.` -> `mlp`."""
    if not prefix or _block_prefix(key) != prefix:
        return None
    rest = key[len(prefix):].split(".")
    return rest[1] if len(rest) > 2 else ""


def _block_prefix(key: str) -> str | None:
    """`model.layers.3.self_attn.q_proj` -> `model.layers.`; None for a name outside blocks."""
    parts = key.split(".")
    for i, p in enumerate(parts):
        if p.isdigit():
            return ".".join(parts[:i]) + "."
    return None


def read(path: str) -> dict[str, StoredArray]:
    """A GGUF file's tensors under their Hugging Face names, dequantized to float32 on `load()`;
    `.skipped` the tensors of a type gguf cannot dequantize, `.metadata` the file's facts."""
    gguf = _gguf()
    with open(path, "rb") as fh:
        if os.fstat(fh.fileno()).st_size == 0:
            raise ModelLoadError("file is empty", path)
        buf = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
    with buf:
        meta, tensors, start = parse(buf, path)
    arch = meta.get("general.architecture") if isinstance(meta.get("general.architecture"), str) else None
    names = hf_names([t["name"] for t in tensors], arch)
    chosen = [names.get(t["name"], t["name"]) for t in tensors]
    twice = {n for n, k in collections.Counter(chosen).items() if k > 1}
    # a name two tensors would read as (one's GGUF name is the other's Hugging Face name, or the map gives
    # two the same): both keep their GGUF names, which the file's names are unique in
    names = {t["name"]: n for t, n in zip(tensors, chosen, strict=True) if n not in twice}
    claimed: dict[str, str] = {}

    def claim(key: str, gguf_name: str) -> str:
        if key in claimed:
            raise ModelLoadError(f"tensors '{printable(claimed[key])}' and '{printable(gguf_name)}' would both be read "
                                 f"as '{printable(key)}' (a GGUF name that is another tensor's Hugging Face name)",
                                 path)
        claimed[key] = gguf_name
        return key
    big = bool(tensors) and tensors[0]["order"] == ">"
    out = WeightSet()
    counts: dict[str, int] = {}
    split = experts_split = 0
    unsplit: list[str] = []
    for t in tensors:
        qname = t["qtype"].name
        counts[qname] = counts.get(qname, 0) + 1
        name = names.get(t["name"], t["name"])
        if not _dequantizable(gguf, t["qtype"]):
            out.skipped.append({"name": name, "parameter": t["name"], "op_type": "gguf",
                                "reason": f"GGUF type {qname}: the installed gguf cannot dequantize it"})
            continue
        if t["order"] == ">" and qname not in _PLAIN and qname not in BIG_ENDIAN_FIELDS:
            out.skipped.append({"name": name, "parameter": t["name"], "op_type": "gguf",
                                "reason": f"GGUF type {qname} in a big-endian file: the byte order of its blocks is "
                                          "not defined (gguf's gguf_convert_endian converts only "
                                          f"{', '.join(sorted(BIG_ENDIAN_FIELDS))} and the plain types)"})
            continue
        merged = _MERGED_EXPERTS.match(name) if len(t["shape"]) == 3 and name != t["name"] else None
        experts = t["shape"][0]
        if merged and not (0 < experts <= _MAX_EXPERTS and t["nbytes"] and experts_split + experts <= _MAX_SPLIT):
            merged = None  # the count of experts is none the bytes vouch for: one stack, as stored
            unsplit.append(t["name"])
        if merged:  # one matrix per expert, as the checkpoint the file was converted from names them
            split += 1
            experts_split += experts
            for e in range(t["shape"][0]):
                out[claim(f"{merged['stack']}.{e}.{merged['part']}{merged['suffix'] or ''}", t["name"])] = StoredArray(
                    t["shape"][1:], np.dtype(_float_of(t["qtype"])), _loader(gguf, start, t, path, e), qname)
            continue
        out[claim(name, t["name"])] = StoredArray(t["shape"], np.dtype(_float_of(t["qtype"])),
                                                  _loader(gguf, start, t, path), qname)
    out.metadata = {"format": "gguf", "architecture": arch, "quantization": dict(sorted(counts.items())),
                    "tensors": len(tensors), "byte_order": "big-endian" if big else "little-endian"}
    for key, label in (("context_length", "context_length"), ("block_count", "block_count"),
                       ("embedding_length", "embedding_length")):
        value = meta.get(f"{arch}.{key}")
        if type(value) is int:  # a count; a hostile string or array there is no fact about the model
            out.metadata[label] = value
    for key, kind in (("general.name", str), ("general.file_type", int), ("general.quantization_version", int)):
        if type(meta.get(key)) is kind:
            out.metadata[key.split(".", 1)[1]] = meta[key]
    if unsplit:  # one note, however many stacks
        out.notes.append(f"GGUF: {len(unsplit)} expert stack(s) read as one tensor each (first: "
                         f"'{printable(unsplit[0])[:200]}'): irtools splits stacks of 1 to {_MAX_EXPERTS} experts "
                         f"holding data, {_MAX_SPLIT} matrices in all")
    renamed = sum(1 for t in tensors if names.get(t["name"], t["name"]) != t["name"])
    out.notes.append(f"GGUF ({arch or 'unknown architecture'}): {renamed} of {len(tensors)} tensor names mapped "
                     "back to Hugging Face names with gguf's tensor-name map"
                     + (f"; {split} merged expert stack(s) read one matrix per expert" if split else "")
                     + ("; big-endian file, byte-swapped on reading" if big else "")
                     + (f"; {len(out.skipped)} tensor(s) of a type irtools cannot dequantize skipped"
                        if out.skipped else ""))
    return out


def _float_of(qtype) -> type:
    name = qtype.name
    return {"F64": np.float64, "I8": np.int8, "I16": np.int16, "I32": np.int32, "I64": np.int64}.get(name, np.float32)


def _dequantizable(gguf, qtype) -> bool:
    if qtype.name in ("F32", "F16", "F64", "I8", "I16", "I32", "I64"):
        return True
    return qtype in gguf.quants._type_traits


_PLAIN = {"F32": np.float32, "F16": np.float16, "F64": np.float64, "I8": np.int8, "I16": np.int16, "I32": np.int32,
          "I64": np.int64}
#: Big-endian files: the byte offsets of each block's 16-bit fields (its f16 scales), swapped before gguf's
#: dequantizer reads the block; the types and fields gguf's own gguf_convert_endian.py swaps (ggml-common.h:
#: block_q4_0/q8_0 `d`; block_q4_K `d`, `dmin`; block_q6_K `d` after its 208 bytes of codes; MXFP4/NVFP4
#: are bytes only; BF16 one 16-bit value). Other quantized types have no defined big-endian layout.
BIG_ENDIAN_FIELDS = {"Q4_0": (0,), "Q8_0": (0,), "Q4_K": (0, 2), "Q6_K": (208,), "MXFP4": (), "NVFP4": (),
                     "BF16": (0,)}


def _swap_fields(band: np.ndarray, type_size: int, fields: tuple[int, ...]) -> np.ndarray:
    """A band of big-endian blocks (rows, bytes) as a little-endian copy: each 16-bit field swapped."""
    if not fields:
        return band
    out = np.array(band)
    blocks = out.reshape(-1, type_size)
    for at in fields:
        blocks[:, [at, at + 1]] = blocks[:, [at + 1, at]]
    return out


def _loader(gguf, start: int, t: dict, path: str, part: int | None = None):
    """The tensor's load(); with `part`, that index along its first axis alone (one expert's matrix)."""
    qtype, shape = t["qtype"], t["shape"]
    block, type_size = gguf.GGML_QUANT_SIZES[qtype]
    row_bytes = shape[-1] // block * type_size
    offset, nbytes = start + t["offset"], t["nbytes"]
    if part is not None:
        nbytes //= shape[0]
        offset += part * nbytes
        shape = shape[1:]
    rows = math.prod(shape[:-1])

    def load() -> np.ndarray:
        """Read and dequantized a band of rows at a time into one output: the band's bytes are the only
        other memory (a memory map would keep every page of the tensor resident until it is closed)."""
        if not nbytes:
            return np.zeros(shape, np.float32)
        plain = qtype.name in _PLAIN
        stored = np.dtype(_PLAIN[qtype.name]).newbyteorder(t["order"]) if plain else None
        out = np.empty((rows, shape[-1]), np.float32 if not plain or qtype.name == "F16" else
                       stored.newbyteorder("="))
        band = max(1, _BAND_BYTES // max(shape[-1] * 4, 1))
        fields = BIG_ENDIAN_FIELDS[qtype.name] if t["order"] == ">" and not plain else ()
        with open(path, "rb") as fh:
            for r in range(0, rows, band):
                n = min(band, rows - r)
                fh.seek(offset + r * row_bytes)
                raw = np.fromfile(fh, np.uint8, n * row_bytes)
                if raw.size != n * row_bytes:
                    raise ModelLoadError(f"tensor '{printable(t['name'])}' ends past the end of the file (the file "
                                         "changed after it was opened?)", path)
                raw = raw.reshape(n, row_bytes)
                out[r:r + n] = raw.view(stored) if plain else \
                    gguf.quants.dequantize(_swap_fields(raw, type_size, fields), qtype)
        return out.reshape(shape)

    return load
