"""Frontends: one module per source framework, each turning a model into the ONNX-derived IR.

`frontends.onnx_file` reads ONNX files; framework frontends import their framework only when used.
"""
