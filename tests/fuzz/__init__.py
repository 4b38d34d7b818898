"""Hostile and broken model files: generators for each class of attack, and the harness that
runs irtools on them and checks what it must never do (issue #12).

`hostile` builds hand-crafted files for each named class (reads outside the model, crashes and
hangs, memory bombs, lies, bad names); `strategies` holds hypothesis strategies that build
malformed ONNX, safetensors, PyTorch zip/legacy pickles, npz and HDF5 files; `harness` runs
the CLI in-process (or in a subprocess where a case needs isolation) and asserts the contract:
exit 0, or exit 2 with exactly one `irtools: error:` line; no traceback and never the
"unexpected" catch-all; no file opened outside the model's folder (an audit hook on `open`);
no hang (a per-case alarm); inputs unchanged; peak RSS bounded (subprocess cases).
"""
