"""Opening Keras *files*: `.keras` and full-model `.h5` archives and SavedModel folders, into a `keras.Model`.

`frontends.keras` converts a `keras.Model` (an object) into ONNX; this module is everything before
that: recognising a Keras model file (`is_keras_model_file`), refusing a hostile one before Keras
opens it (`check_archive_extraction`: a `.keras` archive that inflates past the memory budget or
`ARCHIVE_MAX_RATIO` times its size; the per-entry and HDF5 checks of `frontends.weights_file`),
loading it in Keras' `safe_mode` or, with `trust=True` only, a SavedModel (`load_keras_file`), and
keeping TensorFlow's native log lines off the terminal meanwhile (`native_stderr_captured`). The
file side lives apart from the conversion so that each module holds one job; `frontends.keras`
re-exports every public name here, so `irtools.frontends.keras.from_keras_file` etc. keep working.

TensorFlow and Keras are imported only when a file is loaded; `frontends.keras` is imported inside
the functions that convert (`from_keras_file`, `open_keras_file`), as it re-exports this module.
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from irtools import budget
from irtools.errors import IrtoolsError, ModelLoadError, printable
from irtools.frontends.keras_patches import _import_tf

if TYPE_CHECKING:
    import onnx

__all__ = ["ARCHIVE_INFLATE_FREE", "ARCHIVE_MAX_RATIO", "check_archive_extraction", "from_keras_file",
           "is_keras_model_file", "is_saved_model_dir", "load_keras_file", "native_stderr_captured", "open_keras_file"]


# -- model files -------------------------------------------------------------------------------
def is_saved_model_dir(path: str) -> bool:
    return os.path.isdir(path) and os.path.isfile(os.path.join(path, "saved_model.pb"))


def is_keras_model_file(path: str) -> bool:
    """A whole Keras model: `.keras`, a full-model `.h5`/`.hdf5` (not weights only), or a SavedModel directory.

    By content where the name and the bytes disagree: a `.keras` file whose first bytes are a weights file's
    (a torch zip, safetensors, GGUF: `formats.find_format` by magic) and an `.h5` that is no HDF5 file are
    left to the weights row, which reads what they hold with a note (before: Keras' `There is no item named
    'config.json' in the archive`, or h5py's `file signature not found` for a GGUF named `.h5`)."""
    if not isinstance(path, str):
        return False
    lower = path.lower()
    if is_saved_model_dir(path):
        return True
    if not os.path.isfile(path):
        return False
    if lower.endswith(".keras"):
        return not _holds_weights_format(path)
    if lower.endswith((".h5", ".hdf5")) and not lower.endswith(".weights.h5"):
        if _holds_weights_format(path):
            return False
        from irtools.frontends.weights_file import h5_is_full_model  # noqa: PLC0415

        return h5_is_full_model(path)
    return False


def _holds_weights_format(path: str) -> bool:
    """Whether a file's first bytes are those of a weights format other than HDF5 (`formats.FORMATS`' magic)."""
    from irtools.frontends.formats import FORMATS, _head  # noqa: PLC0415

    head = _head(path)
    return any(f.magic is not None and f.name != "hdf5" and f.magic(head, path) for f in FORMATS)


def load_keras_file(path: str, trust: bool = False):
    """A `keras.Model` from a `.keras`/`.h5` file (Keras `safe_mode`) or a SavedModel directory.

    `safe_mode=True` refuses Lambda layers whose function was serialized as Python bytecode, the
    one way a `.keras`/`.h5` config carries code; the rest of the config can only name classes
    of the keras packages or registered custom objects, and weights are read from HDF5 datasets
    (no pickle). A SavedModel (Keras 3 `model.export`) is a TensorFlow graph, i.e. a program
    (TensorFlow's security model: running an untrusted model is running untrusted code; its ops
    can read and write files, and the conversion's constant folding already runs some of them),
    so it is loaded only with `trust=True`; it is wrapped in a `TFSMLayer`, its graph already
    traced, and its variables keep their TensorFlow names (`layer_kernel` for `layer/kernel`).
    """
    if not os.path.exists(path):
        raise IrtoolsError("no such file or directory", path)
    if path.lower().endswith(".weights.h5"):
        raise IrtoolsError("a .weights.h5 file holds weights only, no graph to convert: analyze it, or load it "
                           "into its model in Python", path)
    saved_model = is_saved_model_dir(path)
    if saved_model and not trust:
        raise IrtoolsError("refused: a SavedModel is a TensorFlow graph whose ops can read and write files "
                           "when it runs; pass --trust (trust=True) only for files you trust", path)
    from irtools.frontends.weights_file import check_hdf5_file, check_keras_archive  # noqa: PLC0415

    if path.lower().endswith(".keras"):  # checked before TensorFlow is imported (seconds, log lines)
        check_archive_extraction(path)  # what Keras extracts in all, before any entry is opened
        check_keras_archive(path)  # entries past the memory budget, zip bombs, HDF5 external/virtual storage
    elif path.lower().endswith((".h5", ".hdf5")):
        check_hdf5_file(path)  # HDF5 external links, external storage, virtual datasets
    _import_tf()
    import keras  # noqa: PLC0415

    if saved_model:
        try:
            layer = keras.layers.TFSMLayer(path, call_endpoint="serve")
        except Exception as exc:
            raise IrtoolsError(f"cannot load the SavedModel: {type(exc).__name__}: {_first_line(exc)}", path) from exc
        return _saved_model_as_keras(keras, layer, path)
    try:
        with _declared_variables_bounded(path):
            return keras.models.load_model(path, compile=False, safe_mode=True)
    except IrtoolsError:
        raise
    except Exception as exc:
        raise IrtoolsError(f"cannot load the Keras model: {type(exc).__name__}: {_first_line(exc)}", path) from exc


#: The variables a Keras file's config declares may take at most this many times the bytes of the weights the file
#: stores (or `DECLARED_VARIABLES_FREE` bytes more): Keras allocates every variable when it builds the model from
#: its config, before it reads the weights, so a 2 KB config naming Dense(100000) twice asked for 80 GB.
DECLARED_VARIABLES_RATIO = 16
DECLARED_VARIABLES_FREE = 64 << 20


def _stored_weight_bytes(path: str) -> int:
    """The bytes of weights a Keras file stores: the weights entry Keras reads from a `.keras` archive
    (`model.weights.h5` / `.npz`, inflated; another entry, padding, raises nothing), or the file's size."""
    if not path.lower().endswith(".keras"):
        return os.path.getsize(path)
    import zipfile  # noqa: PLC0415

    with zipfile.ZipFile(path) as z:
        return sum(i.file_size for i in z.infolist() if i.filename in ("model.weights.h5", "model.weights.npz"))


#: The bound of the Keras load in progress on each thread (`_declared_variables_bounded`); the wrapper on Keras'
#: Variable is installed while any load runs, and passes through on threads with none.
_BOUNDS = threading.local()
_PATCH_LOCK = threading.Lock()
_PATCH: list = [0, None]  # loads in progress, Keras' own Variable.__init__


def _bounded_init(self, initializer, shape=None, dtype=None, *args, **kwargs):
    """Keras' Variable.__init__, after counting the variable against this thread's bound (if a load set one)."""
    bound = getattr(_BOUNDS, "current", None)
    if bound is not None:
        bound.count(initializer, shape, dtype, kwargs.get("name"))
    return _PATCH[1](self, initializer, shape, dtype, *args, **kwargs)


class _Bound:
    """The variable bytes one Keras load may declare: `allowed` (the ratio rule) and the memory budget."""

    def __init__(self, path: str, stored: int):
        self.path, self.stored, self.declared = path, stored, 0
        self.allowed = DECLARED_VARIABLES_FREE + DECLARED_VARIABLES_RATIO * stored

    def count(self, initializer, shape, dtype, name) -> None:
        dims = getattr(initializer, "shape", None) if shape is None else shape
        try:
            count = math.prod(int(d) for d in dims) if dims is not None else 0
            itemsize = np.dtype(getattr(dtype, "name", dtype) or "float32").itemsize
        except (TypeError, ValueError):
            count, itemsize = 0, 4
        self.declared += max(count, 0) * itemsize
        if self.declared > self.allowed:
            raise ModelLoadError(f"the model's config declares {budget.format_size(self.declared)} of variables (so "
                                 f"far, at '{printable(str(name or ''))}') for {budget.format_size(self.stored)} of "
                                 "stored weights: refused before Keras allocates them", self.path)
        budget.check(self.declared, "the variables the model's config declares", self.path)


@contextlib.contextmanager
def _declared_variables_bounded(path: str) -> Iterator[None]:
    """Keras' variable creation on this thread refused, before it allocates, once the variables declared so far
    take more than the memory budget or `DECLARED_VARIABLES_RATIO` times the weights the file stores
    (`_stored_weight_bytes`): the model's config, not its weights, decides what Keras allocates at build time.
    Loads on several threads each count their own; other threads' variables pass through."""
    try:
        from keras.src.backend.common import variables  # noqa: PLC0415
    except ImportError:  # another Keras layout: nothing to bound
        yield
        return
    outer = getattr(_BOUNDS, "current", None)
    _BOUNDS.current = _Bound(path, _stored_weight_bytes(path))
    with _PATCH_LOCK:
        if _PATCH[0] == 0:
            _PATCH[1] = variables.Variable.__init__
            variables.Variable.__init__ = _bounded_init
        _PATCH[0] += 1
    try:
        yield
    finally:
        _BOUNDS.current = outer
        with _PATCH_LOCK:
            _PATCH[0] -= 1
            if _PATCH[0] == 0:
                variables.Variable.__init__ = _PATCH[1]


#: A whole `.keras` archive may inflate to at most this many times its own size (or
#: `ARCHIVE_INFLATE_FREE` bytes, whichever is larger): Keras extracts every entry into a temporary
#: folder, so 64 entries of 16 MiB of zeros (each under the per-entry check) in a 1 MB archive would
#: write 1 GiB. Weights compress little (float32: ~1.1x); a config compresses ~10x.
ARCHIVE_MAX_RATIO = 256
ARCHIVE_INFLATE_FREE = 16 << 20


def check_archive_extraction(path: str) -> int:
    """Refuse a `.keras` archive with two entries of one name (`formats.common.unique_entries`), or
    whose entries declare, in all, more than the memory budget or more than `ARCHIVE_MAX_RATIO` times
    the archive's own bytes (past `ARCHIVE_INFLATE_FREE`), before Keras extracts any of it. Returns the
    declared total."""
    import zipfile  # noqa: PLC0415

    from irtools.files import check_input  # noqa: PLC0415
    from irtools.frontends.formats.common import unique_entries  # noqa: PLC0415

    try:
        with zipfile.ZipFile(check_input(path)) as z:
            entries = unique_entries(z, path)  # the zip rule of npz and torch zips: no name twice
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError) as exc:
        raise ModelLoadError(f"not a readable .keras archive ({printable(exc)})", path) from None
    total = sum(e.file_size for e in entries)
    size = os.path.getsize(path)
    if total > max(ARCHIVE_INFLATE_FREE, size * ARCHIVE_MAX_RATIO):
        raise ModelLoadError(f"the archive's {len(entries)} entries inflate {size} bytes to {total} in all (over "
                             f"{ARCHIVE_MAX_RATIO}x: refused as a zip bomb before Keras extracts it)", path)
    budget.check(total, f"extracting the archive's {len(entries)} entries", path)
    return total


def _first_line(exc, limit: int = 200) -> str:
    """The exception's first line, cut at `limit` characters (Keras quotes a whole model config)."""
    text = str(exc).strip()
    line = text.splitlines()[0] if text else ""
    return line if len(line) <= limit else line[:limit] + "..."


def _saved_model_as_keras(keras, layer, path):
    specs = list(getattr(layer.call_endpoint_fn, "input_signature", None) or [])
    if len(specs) != 1:
        raise IrtoolsError(f"SavedModel 'serve' endpoint with {len(specs)} inputs: only one is supported", path)
    shape = tuple(specs[0].shape)
    inp = keras.Input(batch_shape=(1, *shape[1:]) if shape and shape[0] is None else shape, dtype=specs[0].dtype.name,
                      name=getattr(specs[0], "name", None) or "input")
    return keras.Model(inp, layer(inp), name=os.path.basename(os.path.normpath(path)) or "saved_model")


def from_keras_file(path: str, input_shapes: Mapping[str, Sequence[int]] | None = None,
                    opset: int | None = None, trust: bool = False) -> onnx.ModelProto:
    """`from_keras(load_keras_file(path, trust))`, with `--input-shape`s given as {name: dims}."""
    from irtools.frontends.keras import from_keras  # noqa: PLC0415

    model = load_keras_file(path, trust=trust)
    shape = next(iter(input_shapes.values())) if input_shapes else None
    return from_keras(model, input_shape=tuple(shape) if shape else None, opset=opset)


# -- the source table's row (irtools.frontends.SOURCE_KINDS) ---------------------------------
def open_keras_file(path: str, name: str, options):
    from irtools.frontends.keras import open_keras_model  # noqa: PLC0415

    with native_stderr_captured():
        return open_keras_model(load_keras_file(path, trust=options.trust), name, options, "keras-file")


@contextlib.contextmanager
def native_stderr_captured() -> Iterator[None]:
    """Keep what TensorFlow, absl and Keras write to the process's stderr (file descriptor 2: C++
    log lines such as oneDNN and CUDA-stub notices, which no environment variable silences before
    absl is initialised, and Python `WARNING:absl:` records) off the terminal while a Keras file
    is loaded and converted, so a failure prints only irtools' one line. Lines irtools itself
    writes meanwhile (`irtools: ...` notes) are passed on; with `--debug` nothing is captured."""
    import sys  # noqa: PLC0415
    import tempfile  # noqa: PLC0415

    if "--debug" in sys.argv[1:] or os.environ.get("IRTOOLS_DEBUG"):
        yield
        return
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):
        yield
        return
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            try:
                sys.stderr.flush()
            except (OSError, ValueError):
                pass
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            ours = [line for line in sink.read().decode("utf-8", "replace").splitlines(keepends=True)
                    if line.startswith("irtools: ")]
            if ours:
                sys.stderr.write("".join(ours))
                sys.stderr.flush()
