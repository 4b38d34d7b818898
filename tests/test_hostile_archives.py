"""`.keras` archives (issue #12): `check_keras_archive` refuses HDF5 weights inside that would
read other files and entries that inflate like zip bombs, and accepts a clean archive."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest

from irtools.errors import ModelLoadError
from irtools.frontends.weights_file import check_hdf5_file, check_keras_archive
from tests.fuzz import formats as f

h5py = pytest.importorskip("h5py")


def _weights_h5(make) -> bytes:
    buf = io.BytesIO()
    with h5py.File(buf, "w") as fh:
        fh.create_dataset("layers/dense/vars/0", data=np.eye(4, dtype=np.float32))
        make(fh)
    return buf.getvalue()


def _archive(path, entries: dict[str, bytes], compression=zipfile.ZIP_STORED) -> str:
    with zipfile.ZipFile(path, "w", compression) as z:
        for name, data in entries.items():
            z.writestr(name, data)
    return str(path)


@pytest.mark.parametrize("compression", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED])
def test_keras_archive_with_external_storage_is_refused(tmp_path, compression):
    weights = _weights_h5(lambda fh: fh.create_dataset("layers/x/vars/0", shape=(8,), dtype="f4",
                                                       external=[("/etc/passwd", 0, 32)]))
    path = _archive(tmp_path / "m.keras", {"config.json": b"{}", "model.weights.h5": weights}, compression)
    with pytest.raises(ModelLoadError, match="external storage"):
        check_keras_archive(path)


def test_keras_archive_with_an_external_link_is_refused(tmp_path):
    weights = _weights_h5(lambda fh: fh.__setitem__("layers/l", h5py.ExternalLink("/tmp/other.h5", "/")))
    path = _archive(tmp_path / "m.keras", {"config.json": b"{}", "model.weights.h5": weights})
    with pytest.raises(ModelLoadError, match="external link"):
        check_keras_archive(path)


def test_keras_archive_zip_bomb_is_refused(tmp_path):
    (tmp_path / "m.keras").write_bytes(f.zeros_member_bomb(64 << 20))
    with pytest.raises(ModelLoadError, match="zip bomb"):
        check_keras_archive(str(tmp_path / "m.keras"))


def test_clean_keras_archive_passes(tmp_path):
    path = _archive(tmp_path / "m.keras", {"config.json": b"{}", "model.weights.h5": _weights_h5(lambda fh: None)},
                    zipfile.ZIP_DEFLATED)
    check_keras_archive(path)  # no error
    (tmp_path / "junk.keras").write_bytes(b"PK\x03\x04 not really")
    with pytest.raises(ModelLoadError, match="not a readable .keras archive"):
        check_keras_archive(str(tmp_path / "junk.keras"))


def test_check_hdf5_file_refuses_external_storage_and_accepts_a_clean_file(tmp_path):
    bad, good = tmp_path / "bad.h5", tmp_path / "good.h5"
    bad.write_bytes(_weights_h5(lambda fh: fh.create_dataset("x", shape=(8,), dtype="f4",
                                                             external=[("/etc/passwd", 0, 32)])))
    good.write_bytes(_weights_h5(lambda fh: None))
    with pytest.raises(ModelLoadError, match="external storage"):
        check_hdf5_file(str(bad))
    check_hdf5_file(str(good))


def _many_zero_members(path, members: int, each: int) -> str:
    """A deflated archive of `members` entries of `each` zero bytes (each alone passes the per-entry
    ratio check: 16 MiB is the free amount) beside a config: ~1 MB for 64 x 16 MiB."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as z:
        z.writestr("config.json", b"{}")
        for k in range(members):
            z.writestr(f"assets/zeros{k}.bin", bytes(each))
    return str(path)


def test_keras_archive_of_many_members_is_refused_on_its_total_before_extraction(tmp_path):
    """64 members of 16 MiB zeros made Keras extract 949 MiB: each member passes the per-entry
    check, the archive as a whole is a bomb (the declared total against the archive's own size)."""
    from irtools.frontends.keras import ARCHIVE_MAX_RATIO, check_archive_extraction

    path = _many_zero_members(tmp_path / "m.keras", 64, 16 << 20)
    size = (tmp_path / "m.keras").stat().st_size
    assert size < 1_200_000 and 64 * (16 << 20) > size * ARCHIVE_MAX_RATIO
    check_keras_archive(path)  # the per-entry check alone lets it through
    with pytest.raises(ModelLoadError, match=f"65 entries inflate {size} bytes to {64 * (16 << 20) + 2} in all"):
        check_archive_extraction(path)


def test_keras_archive_total_is_checked_against_the_budget(tmp_path):
    from irtools import budget
    from irtools.frontends.keras import check_archive_extraction

    weights = np.random.default_rng(0).standard_normal(1 << 18).astype(np.float32).tobytes()  # 1 MiB, ~incompressible
    path = _archive(tmp_path / "m.keras", {"config.json": b"{}", "model.weights.h5": weights}, zipfile.ZIP_DEFLATED)
    assert check_archive_extraction(path) == len(weights) + 2
    budget.set_limit("512K")
    try:
        with pytest.raises(budget.MemoryBudgetError, match="extracting the archive's 2 entries"):
            check_archive_extraction(path)
    finally:
        budget.set_limit(None)


def test_many_member_keras_bomb_through_the_cli(tmp_path):
    """End to end, in a child: one line, before TensorFlow is even imported (fast, small)."""
    from tests.fuzz import harness

    path = _many_zero_members(tmp_path / "m.keras", 64, 16 << 20)
    outcome = harness.run_subprocess(["analyze", path])
    harness.check(outcome, str(tmp_path), harness.snapshot(str(tmp_path)), expect=2, message="zip bomb")
    assert "Keras extracts" in outcome.stderr
