"""Hostile files, round 11: a Keras file whose config, not its weights, declares the memory Keras allocates.

Keras builds a model from its config (`config.json` in a `.keras` archive, the `model_config` attribute of a
full-model `.h5`) and allocates every variable the config's layers declare before it reads a single stored weight.
A 13 KB archive whose config names a Dense layer of 20000 x 20000 made Keras allocate 1.5 GB, then fail on the
weights' shapes; with 100000 it asks for 40 GB. Each variable Keras creates while loading a file is now counted
first, and the model is refused on one line once they take more than the memory budget or 16 times the weights
the file stores (64 MiB free), before Keras allocates it.
"""

from __future__ import annotations

import json
import zipfile

import pytest

import irtools
from tests.test_hostile_round8 import _one_line
from tests.test_hostile_round9 import _cli

keras = pytest.importorskip("keras")


def _inflated(config: dict, units: int) -> dict:
    """`config` with every Dense layer `units` wide and every input and build shape `units` long."""
    def walk(node):
        if isinstance(node, dict):
            if node.get("class_name") == "Dense":
                node["config"]["units"] = units
            if node.get("class_name") == "InputLayer":
                node["config"]["batch_shape"] = [None, units]
            if node.get("build_config"):
                node["build_config"]["input_shape"] = [None, units]
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(config)
    return config


def _small_model():
    keras.utils.set_random_seed(0)
    x = keras.Input((8,), name="x")
    return keras.Model(x, keras.layers.Dense(4, name="d")(x))


def _inflated_archive(tmp_path, units=20000):
    small = tmp_path / "small.keras"
    _small_model().save(small)
    with zipfile.ZipFile(small) as z:
        entries = {name: z.read(name) for name in z.namelist()}
    entries["config.json"] = json.dumps(_inflated(json.loads(entries["config.json"]), units)).encode()
    path = tmp_path / "inflated.keras"
    with zipfile.ZipFile(path, "w") as z:
        for name, data in entries.items():
            z.writestr(name, data)
    return path


def test_a_keras_archive_whose_config_declares_gigabytes_is_refused_before_keras_allocates(tmp_path):
    from keras.src.backend.common import variables

    from irtools.errors import ModelLoadError

    original = variables.Variable.__init__
    path = _inflated_archive(tmp_path)
    assert path.stat().st_size < 20000
    with pytest.raises(ModelLoadError, match="declares 1.5 GiB of variables .* refused before Keras allocates"):
        irtools.analyze(str(path), metrics=["spectral"])
    assert variables.Variable.__init__ is original  # Keras is left as it was
    line = _one_line(_cli("analyze", path, "--metrics", "spectral"), "refused before Keras allocates")
    assert "KiB of stored weights" in line


def test_a_full_model_h5_whose_config_declares_gigabytes_is_refused(tmp_path):
    h5py = pytest.importorskip("h5py")
    path = tmp_path / "inflated.h5"
    _small_model().save(path)
    with h5py.File(path, "r+") as f:
        config = json.loads(f.attrs["model_config"])
        f.attrs["model_config"] = json.dumps(_inflated(config, 20000))
    _one_line(_cli("analyze", path, "--metrics", "spectral"), "refused before Keras allocates")


def test_files_whose_config_fits_their_weights_still_load(tmp_path):
    """The same small model, its config untouched, in both formats: rows as before, the bound never reached."""
    model = _small_model()
    rows = []
    for name in ("ok.keras", "ok.h5"):
        model.save(tmp_path / name)
        result = irtools.analyze(str(tmp_path / name), metrics=["spectral"], min_evals=1)
        rows.append([(r["name"], r["N"], r["M"], r["lambda_max"]) for r in result.layers])
    assert rows[0] == rows[1] and [r[:3] for r in rows[0]] == [("d", 8, 4)]


def test_an_entry_keras_never_reads_raises_no_allowance(tmp_path):
    """A zero-filled `pad.h5` beside `model.weights.h5` does not count as stored weights: the allowance is what the
    weights entry Keras reads holds."""
    h5py = pytest.importorskip("h5py")
    import io

    import numpy as np

    from irtools.errors import IrtoolsError

    path = _inflated_archive(tmp_path, units=7000)  # 187 MiB declared, 64 MiB + 16 x 11.5 KiB allowed
    pad = io.BytesIO()
    with h5py.File(pad, "w") as f:
        f.create_dataset("z", data=np.zeros((16 << 20) // 4, np.float32))
    with zipfile.ZipFile(path, "a") as z:
        z.writestr("pad.h5", pad.getvalue())
    with pytest.raises(IrtoolsError, match="refused before Keras allocates"):
        irtools.analyze(str(path), metrics=["spectral"])


def test_a_bounded_load_counts_only_its_own_threads_variables(tmp_path):
    """While one thread loads a Keras file, another builds a 128 MiB Dense of its own: not refused, and Keras'
    Variable is itself again once the load ends."""
    import threading

    from keras.src.backend.common import variables

    from irtools.frontends.keras_files import _declared_variables_bounded

    original = variables.Variable.__init__
    small = tmp_path / "small.keras"
    _small_model().save(small)
    inside, leave = threading.Event(), threading.Event()

    def load():
        with _declared_variables_bounded(str(small)):
            inside.set()
            leave.wait(30)

    loader = threading.Thread(target=load)
    loader.start()
    try:
        assert inside.wait(30) and variables.Variable.__init__ is not original
        dense = keras.layers.Dense(8192)
        dense.build((None, 4096))  # 4096 x 8192 float32 on this thread: no bound here
        assert tuple(dense.kernel.shape) == (4096, 8192)
    finally:
        leave.set()
        loader.join()
    assert variables.Variable.__init__ is original


def test_a_keras_int8_quantized_model_is_skipped_entries_not_a_crash(tmp_path):
    """Keras' int8 quantization stores int8 kernels with scales the graph computes: skipped entries, each with its
    reason (before: IndexError in the weights pass)."""
    model = _small_model()
    model.quantize("int8")
    model.save(tmp_path / "int8.keras")
    result = irtools.analyze(str(tmp_path / "int8.keras"), metrics=["spectral"], min_evals=1)
    assert result.layers == [] and result.skipped
    assert all("quantized weight" in s["reason"] for s in result.skipped)
