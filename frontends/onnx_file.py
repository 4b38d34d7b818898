"""The ONNX frontend: an ONNX file (or ModelProto) into the analysis IR.

ONNX is the IR's native format, so this only validates and loads (see `irtools.load`).
"""

from __future__ import annotations

from irtools.model import IRModel, load

__all__ = ["IRModel", "load"]
