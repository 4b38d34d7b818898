"""Outputs of an analysis: terminal tables, the HTML report, side-by-side comparison, annotated ONNX.

`tables` (rich tables for the CLI), `html` (`irtools report`), `compare` (`irtools compare`) and
`annotate` (`irtools annotate`). They sit on top: they read analyses, nothing below imports them.
"""
