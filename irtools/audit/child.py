"""The process that analyses the models of an audit: `python -m irtools.audit.child` reads jobs
(JSON lines on stdin: source, options, memory budget, output path) and writes each model's result
file, one after the other, answering "done" for each.

It runs apart from the Dask worker so that a model over its time or memory limit, or one that
crashes the interpreter, can be stopped without touching the worker or the other models; it stays
up between models so that the imports (onnx, numba's kernels) are paid once per worker thread, not
once per model. A model irtools cannot read is a `failed` row written here; what kills this process
is reported by its parent (`irtools.audit.task`).
"""

from __future__ import annotations

import json
import math
import sys
import time


def parameter_count(opened) -> int:
    """Learnable scalars: the graph's parameters, or for a weights-only source the distinct tensors
    behind its analysable layers (matrices and kernels; 1-D tensors are not layers)."""
    if opened.has_graph:
        return int(sum(p.numel for p in opened.model.parameters))
    shapes = {layer.parameter: layer.weight_shape for layer in opened.layers or []}
    return int(sum(math.prod(s) for s in shapes.values()))


def analyse(source: str, options, fingerprint: str | None):
    """(summary row, layer rows, columns) of one model; a model irtools cannot analyse is a failed
    row with the one-line reason."""
    from irtools.analysis import analyze
    from irtools.audit.results import summary_row
    from irtools.errors import IrtoolsError

    start = time.perf_counter()
    try:
        if options.base is not None:  # a series of fine-tune checkpoints against their base: what each moved
            from irtools.finetune import compare

            opened = None
            analysis = compare(source, options.base, options=options)
        else:
            opened = options.open(source)  # every source option (--framework, --opset, ...) holds in an audit too
            analysis = analyze(opened, options)
    except IrtoolsError as exc:
        error = str(exc)
    except MemoryError:
        error = "out of memory"
    except Exception as exc:  # a bug or an input nothing foresaw: still a row, not a crashed audit
        text = str(exc).splitlines()[0] if str(exc) else ""
        error = f"unexpected {type(exc).__name__}: {text}"
    else:
        row = summary_row(source, analysis, kind="finetune" if opened is None else opened.kind,
                          num_params=None if opened is None else parameter_count(opened),
                          seconds=time.perf_counter() - start, fingerprint=fingerprint)
        return row, analysis.layers or [], analysis.columns
    return summary_row(source, error=error.splitlines()[0], seconds=time.perf_counter() - start,
                       fingerprint=fingerprint), [], []


def run_job(job: dict) -> None:
    """Analyse one model and write its result file (`job["out"]`) whole."""
    from irtools import budget
    from irtools.audit.results import AuditOptions, model_table, table_bytes, write_result

    budget.set_limit(int(job["memory_limit"]) if job.get("memory_limit") else None)
    row, layers, columns = analyse(job["source"], AuditOptions.from_dict(job["options"]), job.get("fingerprint"))
    write_result(job["out"], table_bytes(model_table(row, layers, columns)))


def serve(stdin, stdout) -> int:
    """Jobs as JSON lines on stdin, one "done" line on stdout after each; the imports are paid once."""
    import irtools.analysis  # noqa: F401  (warm: the parent times each model from here on)
    import irtools.frontends  # noqa: F401

    print("ready", file=stdout, flush=True)
    for line in stdin:
        if not line.strip():
            continue
        run_job(json.loads(line))
        print("done", file=stdout, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(serve(sys.stdin, sys.stdout))
