"""PyTorch zip checkpoints whose records say more than data.pkl (found by the held-out sweep):
`byteorder` (PyTorch >= 2.1 writes it; a checkpoint saved on a big-endian machine says "big" and
its storages were read byte-swapped, silently wrong), and what it may not say."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest

from irtools.errors import ModelLoadError
from irtools.frontends.weights_file import read_weights
from tests.fuzz import formats as f

MATRIX = np.arange(12, dtype=np.float32).reshape(3, 4) - 5.5


def _checkpoint(path, order: bytes | None, storage: bytes, storage_type: str = "FloatStorage") -> str:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("archive/data.pkl", f.p_state({"w": f.p_tensor("0", 12, 0, (3, 4), (4, 1), storage_type)}))
        if order is not None:
            z.writestr("archive/byteorder", order)
        z.writestr("archive/data/0", storage)
    path.write_bytes(buf.getvalue())
    return str(path)


@pytest.mark.parametrize("dtype, storage_type", [("f4", "FloatStorage"), ("f8", "DoubleStorage"),
                                                 ("f2", "HalfStorage"), ("i8", "LongStorage")])
def test_big_endian_storages_are_read_as_saved(tmp_path, dtype, storage_type):
    want = MATRIX.astype(dtype)
    big = _checkpoint(tmp_path / "big.pt", b"big", want.astype(">" + dtype).tobytes(), storage_type)
    little = _checkpoint(tmp_path / "little.pt", b"little", want.astype("<" + dtype).tobytes(), storage_type)
    old = _checkpoint(tmp_path / "old.pt", None, want.astype("<" + dtype).tobytes(), storage_type)  # before 2.1
    for path in (big, little, old):
        np.testing.assert_array_equal(read_weights(path)["w"].load(), want)


def test_a_byteorder_record_that_is_neither_is_refused(tmp_path):
    path = _checkpoint(tmp_path / "m.pt", b"middle\n\x1b[2J", MATRIX.tobytes())
    with pytest.raises(ModelLoadError, match=r"byteorder record is 'middle\\n\\x1b\[2J', not little or big"):
        read_weights(path)


def test_a_checkpoint_of_many_tensors_opens_its_archive_once(tmp_path, monkeypatch):
    """Each tensor's read used to reopen the zip, parsing its whole directory: O(n^2) in the tensors
    (a 5000-tensor file of 8x8 matrices took 84 ms per tensor). The archive is now opened once
    for all the reads; the values are still each tensor's own."""
    import zipfile as zf

    from irtools.frontends.formats import pytorch

    n = 300
    state = f.p_state({f"l{i}.weight": f.p_tensor(str(i), 4, 0, (2, 2), (2, 1)) for i in range(n)})
    path = tmp_path / "many.pt"
    path.write_bytes(f.torch_zip(state, {str(i): np.full(4, i, np.float32).tobytes() for i in range(n)}))
    opened = []

    class Counting(zf.ZipFile):
        def __init__(self, *args, **kwargs):
            opened.append(args[0])
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(pytorch.zipfile, "ZipFile", Counting)
    tensors = read_weights(str(path))
    before = len(opened)
    for i, array in enumerate(tensors.values()):
        np.testing.assert_array_equal(array.load(), np.full((2, 2), i, np.float32))
    assert len(opened) - before == 1


def test_records_are_dicts_and_other_globals_stay_refused(tmp_path):
    """A training checkpoint's hyper-parameters (argparse.Namespace) come back as a plain dict, even
    with a BUILD state that is not a dict; a global beside them (os.system) is still refused."""
    from irtools.frontends.formats.unpickler import Record, RestrictedUnpickler

    ns = b"\x80\x02cargparse\nNamespace\n)\x81K\x05b."  # NEWOBJ, then BUILD with the int 5 as its state
    record = RestrictedUnpickler(io.BytesIO(ns), "x").load()
    assert isinstance(record, Record) and dict(record) == {}
    ns_dict = b"\x80\x02cargparse\nNamespace\n)\x81}X\x02\x00\x00\x00lrG?\xb9\x99\x99\x99\x99\x99\x9asb."
    assert dict(RestrictedUnpickler(io.BytesIO(ns_dict), "x").load()) == {"lr": 0.1}
    evil = tmp_path / "evil.pt"
    evil.write_bytes(f.torch_zip(b"\x80\x02cos\nsystem\nX\x04\x00\x00\x00true\x85R.", {}))
    with pytest.raises(ModelLoadError, match=r"refused to unpickle os\.system"):
        read_weights(str(evil))
