"""The analysis IR: an onnx-ir model with static shapes, named parameters and lazily read weights.

`model` (IRModel, load), `loading` (checks on ONNX protobufs), `parameters` (which tensors are
learnable), `shapes` (static shapes and folding), `arrays` (the array view compiled passes read),
`quant` (dequantisation) and `layers` (named 2-D weight matrices). Nothing here imports a pass,
a backend or a frontend.
"""
