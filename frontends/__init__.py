"""Frontends: one module per source framework, each turning a model into the ONNX-derived IR.

`onnx_file` reads ONNX files, `weights_file` weights-only files (safetensors, PyTorch state
dicts, npz), `torch` exports PyTorch modules and `keras` converts Keras models; framework
frontends import their framework only when used.
"""
