import glob
import os

import onnx
import pytest

LIGHT_DIR = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "light")
LIGHT_MODELS = sorted(glob.glob(os.path.join(LIGHT_DIR, "light_*.onnx")))
EXAMPLE = os.path.join(os.path.dirname(os.path.dirname(__file__)), "examples", "digits_cnn.onnx")


@pytest.fixture
def save(tmp_path):
    """Write a ModelProto into tmp_path and return its path."""

    def _save(proto, name="model.onnx"):
        path = tmp_path / name
        onnx.save(proto, str(path))
        return str(path)

    return _save
