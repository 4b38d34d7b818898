"""Keras weights in HDF5 (Keras 3 `.weights.h5`, Keras 2 `save_weights("x.h5")`), read with h5py
alone, and the HDF5 checks every reader of HDF5 model files shares: nothing that points at
other files (external links, external storage, virtual datasets), datasets' declared sizes
against the budget and what the file stores."""

from __future__ import annotations

import math
import os
import zipfile

import numpy as np

from irtools import budget
from irtools.errors import ModelLoadError, UnsupportedError, printable
from irtools.files import check_input
from irtools.frontends import require

from .common import MAX_RATIO, OpenOnce, StoredArray, expands_too_far, unique_entries, zip_member

SUFFIXES = (".h5", ".hdf5")
MISSING = "reading HDF5 weights needs h5py: pip install h5py"
MAGIC = b"\x89HDF\r\n\x1a\n"


def looks_like(head: bytes) -> bool:
    return head.startswith(MAGIC)


def _h5py():
    return require("h5py", missing=MISSING)


def h5_is_full_model(path: str) -> bool:
    """Whether an HDF5 file is a whole Keras model (it has a `model_config`), not weights only."""
    with _open_h5(path) as f:
        return "model_config" in f.attrs


def _open_h5(path: str):
    """An HDF5 file opened for reading, once `check_hdf5_storage` found nothing in it that
    points at other files."""
    h5py = _h5py()
    try:
        f = h5py.File(check_input(path), "r")
    except OSError as exc:
        raise ModelLoadError(f"not a readable HDF5 file: {printable(exc)}", path) from None
    try:
        check_hdf5_storage(f, path)
    except BaseException:
        f.close()
        raise
    return f


def check_hdf5_storage(h5file, path: str) -> None:
    """Refuse an open HDF5 file that would make h5py read other files: external links, datasets
    with external storage, virtual datasets. For every reader of HDF5 model files (weights here,
    full Keras models in `keras`)."""
    h5py = _h5py()

    def link(name, info):  # h5py's visitors stop at a non-None return (an exception raised in one breaks h5py)
        if isinstance(info, h5py.ExternalLink):
            return f"'{printable(name)}' is an external link to '{printable(info.filename)}' (refused: it reads " \
                   "another file)"
        return None

    def dataset(name, obj):
        if not isinstance(obj, h5py.Dataset):
            return None
        if obj.is_virtual:
            return f"dataset '{printable(name)}' is a virtual dataset (refused: it reads other files)"
        if obj.external:
            return f"dataset '{printable(name)}' has external storage (refused: it reads other files)"
        return None

    try:
        problem = _visit_links(h5py, h5file, link) or h5file.visititems(dataset)
    except (KeyError, RuntimeError, OSError, ValueError) as exc:
        raise ModelLoadError(f"not a readable HDF5 file: {printable(exc)}", path) from None
    if problem:
        raise ModelLoadError(problem, path)


def check_hdf5_file(path: str) -> None:
    """Refuse an HDF5 file (a full-model Keras `.h5`) that would read other files, or whose datasets declare
    more than it stores (`check_h5_datasets`): for `frontends.keras` to call before Keras opens it."""
    with _open_h5(path) as f:
        check_h5_datasets(f, os.path.getsize(path), path)  # what Keras allocates for them when it loads


def check_keras_archive(path: str) -> None:
    """Refuse a `.keras` archive (a zip) with two entries of one name, an entry that inflates past
    the memory budget or like a zip bomb, or whose HDF5 weights (`model.weights.h5`) would read other files
    (`check_hdf5_storage`) or declare more than they store (`check_h5_datasets`). For `frontends.keras` to call
    before Keras opens the archive."""
    h5py = _h5py()
    try:
        with zipfile.ZipFile(check_input(path)) as z:
            unique_entries(z, path)  # two `config.json`: Keras reads one, the checks here the other
            for member in z.namelist():
                zip_member(z, member, path)
            for member in (n for n in z.namelist() if n.lower().endswith((".h5", ".hdf5"))):
                with z.open(member) as fh, h5py.File(fh, "r") as f:
                    check_hdf5_storage(f, path)
                    check_h5_datasets(f, z.getinfo(member).file_size, path)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError) as exc:
        raise ModelLoadError(f"not a readable .keras archive ({printable(exc)})", path) from None


def _visit_links(h5py, group, visit, prefix: str = ""):
    """`group.visititems_links(visit)` (h5py >= 3.11), or the same walk by hand on older h5py."""
    if hasattr(group, "visititems_links"):
        return group.visititems_links(visit)
    for key in group:
        info = group.get(key, getlink=True)
        name = f"{prefix}{key}"
        found = visit(name, info)
        if found is None and isinstance(info, h5py.HardLink) and isinstance(group[key], h5py.Group):
            found = _visit_links(h5py, group[key], visit, name + "/")
        if found is not None:
            return found
    return None


def _check_h5_dataset(name: str, obj, path: str) -> int:
    """A dataset's declared bytes against the budget and against what the file stores; returns them."""
    budget.check_shape(obj.shape, obj.dtype.itemsize, f"dataset '{printable(name)}'", path)
    nbytes = math.prod(obj.shape) * obj.dtype.itemsize
    stored = obj.id.get_storage_size()
    if expands_too_far(nbytes, stored):
        raise ModelLoadError(f"dataset '{printable(name)}' declares {nbytes} bytes but the file stores {stored} "
                             f"(over {MAX_RATIO}x: refused)", path)
    return nbytes


def _datasets(h5file) -> list:
    """(name, dataset) of every dataset of an open HDF5 file, collected first: an exception raised inside an
    h5py visitor breaks h5py."""
    h5py = _h5py()
    found: list = []
    h5file.visititems(lambda name, obj: found.append((name, obj)) if isinstance(obj, h5py.Dataset) else None)
    return found


def check_h5_datasets(h5file, file_bytes: int, path: str, datasets: list | None = None) -> int:
    """Every dataset of an open HDF5 file (weights, a full Keras model, a `.keras` archive's weights; or the
    `datasets` already collected from it) against the budget and what the file stores, one by one
    (`_check_h5_dataset`) and together: `file_bytes` (the HDF5 file's own size) must hold what they declare in
    all (`expands_too_far`: 400 datasets of fill values, each under the free amount, were minutes of analysis
    from 1 MB). Returns the declared total."""
    datasets = _datasets(h5file) if datasets is None else datasets
    total = sum(_check_h5_dataset(name, obj, path) for name, obj in datasets)
    budget.check(total, f"the {len(datasets)} datasets of the HDF5 file", path)
    if expands_too_far(total, file_bytes):
        raise ModelLoadError(f"the HDF5 file's {len(datasets)} datasets declare {total:,} bytes in all, but the file "
                             f"is {file_bytes:,} bytes (over {MAX_RATIO}x: refused)", path)
    return total


def read(path: str) -> dict[str, StoredArray]:
    """Every dataset of a Keras weights file, named by its HDF5 path as Keras stored it.

    Keras 3 `.weights.h5`: `layers/<layer>/vars/<i>`; Keras 2 `save_weights("x.h5")`:
    `<layer>/<layer>/kernel:0` (the `:0` is dropped). Optimizer state is left out. A dataset of
    integers, bools or strings is kept like a float one, for `weight_layers` to make a skipped entry
    of it with its reason, as the other readers' (before, it was dropped without a word). Datasets are
    read directly with h5py: no Keras, no code from the file, no other file (`check_hdf5_storage`).
    """
    found: dict[str, StoredArray] = {}
    h5file = OpenOnce(lambda: _open_h5(path))
    with _open_h5(path) as f:
        if "model_config" in f.attrs:
            raise UnsupportedError("a whole Keras model, not a weights file", path)

        everything = _datasets(f)
        check_h5_datasets(f, os.path.getsize(path), path, everything)  # the optimizer's state too: all it declares
        # every dtype: `weight_layers` makes a skipped entry of a non-float matrix
        for name, obj in everything:
            if name.split("/")[0] in ("optimizer", "optimizer_weights"):
                continue
            key = name[:-2] if name.endswith(":0") else name
            if key in found:  # `kernel` and `kernel:0`: one was dropped without a word
                raise ModelLoadError(f"datasets '{printable(key)}' and '{printable(key)}:0' are both tensor "
                                     f"'{printable(key)}' (which one is meant is a guess: refused)", path)
            found[key] = StoredArray(tuple(obj.shape), np.dtype(obj.dtype), _h5_loader(h5file, name))
    if not found:
        raise ModelLoadError("the HDF5 file holds no weights (no dataset outside the optimizer's state)", path)
    return found


def _h5_loader(h5file: OpenOnce, name: str):
    def load():
        return np.asarray(h5file()[name][()])

    return load
