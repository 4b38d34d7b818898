"""One model over a Dask cluster: the spectral family, one task per weight layer.

`spectral_on_cluster(source, scheduler=ADDR)` opens a weights-only source (safetensors, a sharded
safetensors folder or index, GGUF, ...) on the client, applies the spectral pass's skip rules there,
and submits one task per analysed layer. A task carries only the layer's description and its loader
(the file's path, the tensor's offset, dtype and shape: the tensor is read by offset from storage the
workers share, never shipped through the scheduler), computes the layer's eigenvalues and row with
`SpectralPass(workers=1)`, and returns the row; a worker holds one tensor and its Gram matrix at a
time. Failed tasks are retried (`retries`); the rows are gathered in the model's own order, so the
result equals `SpectralPass.analyse` of the same layers in one process (the same numbers to
round-off; bit for bit when both run their BLAS on one thread).

Dask (`irtools[dask]`) is imported only here. Graph sources (ONNX, framework models) are not split:
their weights live in the in-memory graph, which every task would carry.
"""

from __future__ import annotations

from collections.abc import Callable

from irtools.errors import IrtoolsError


def _layer_row(layer, options: dict) -> tuple[dict, list[str], dict]:
    """On a worker: the spectral row of one layer (its tensor read from storage here), its notes and
    its cost (CPU seconds of the task's thread, wall seconds)."""
    import time

    import irtools  # noqa: F401 - registers the passes in a fresh worker
    from irtools.passes.spectral import SpectralPass

    cpu, wall = time.thread_time(), time.perf_counter()
    result = SpectralPass(workers=1, **options).analyse([layer])
    cost = {"cpu_s": time.thread_time() - cpu, "wall_s": time.perf_counter() - wall}
    return result.rows[0], result.notes, cost


def spectral_on_cluster(source, scheduler: str | None = None, *, client=None, retries: int = 2,
                        progress: Callable[[int, int, str], None] | None = None, layout: str = "torch",
                        costs: list | None = None, **options):
    """The spectral pass's `SpectralResult` of a weights-only `source`, one Dask task per layer.

    `scheduler`: a scheduler address (tcp://host:port) or a scheduler file; or pass a
    `distributed.Client` as `client`. `options`: `SpectralPass` options (min_evals, max_evals,
    max_n, method, small_n_xmin, fix_fingers, ...; the backend is the workers' CPU). `progress(done,
    total, name)` is called as rows arrive. `costs`: a list to which each analysed layer's cost is
    appended, in the model's order: {"name", "N", "M", "rf", "cpu_s" (the task thread's CPU time), "wall_s"}.

    A worker lost mid-run (killed, out of memory) loses nothing: the scheduler runs its tasks again on
    the others (a task whose worker died counts as failed only after Dask's `allowed-failures`), and
    each row is taken once, by its layer's place in the model. A row is released on the cluster as
    soon as it is gathered, so a worker lost later has nothing of it to recompute."""
    from irtools.frontends import open_source, require
    from irtools.passes.spectral import SpectralPass, SpectralResult, summarize

    distributed = require("distributed", missing="Dask is not installed: pip install 'irtools[dask]'")

    if options.get("keep_evals") or options.get("randomize") or "backend" in options:
        raise IrtoolsError("the cluster run computes rows only: keep_evals, randomize and backend are not options here")
    opened = open_source(source, layout=layout)
    if opened.layers is None:
        raise IrtoolsError("a cluster run splits weights-only sources (safetensors, GGUF, ...); this source is a "
                           "graph: analyse it in one process")
    checker = SpectralPass(**options)
    checker.fit_options()  # a bad option fails here, before anything is submitted
    todo, skipped = checker.select(opened.layers, opened.skipped)
    own = None
    if client is None:
        if scheduler is None:
            raise IrtoolsError("give a scheduler address (or a distributed.Client)")
        import os

        try:
            own = client = (distributed.Client(scheduler_file=scheduler, timeout="20s") if os.path.isfile(scheduler)
                            else distributed.Client(scheduler, timeout="20s"))
        except (OSError, TimeoutError, ValueError) as exc:
            raise IrtoolsError(f"cannot reach the Dask scheduler at {scheduler}: "
                               f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    try:
        futures = client.map(_layer_row, todo, options=options, pure=False, retries=retries)
        index = {f.key: k for k, f in enumerate(futures)}
        arriving = distributed.as_completed(futures)
        del futures  # as_completed holds each future until it is yielded; then the loop's reference only
        rows: list[dict | None] = [None] * len(todo)
        spent: list[dict | None] = [None] * len(todo)
        notes: list[str] = []
        done = 0
        for future in arriving:
            k = index[future.key]
            row, layer_notes, cost = future.result()
            future.release()  # its result leaves the worker's memory: a worker lost later recomputes nothing
            if rows[k] is not None:  # never counted twice, whatever the cluster reports
                continue
            row["layer_id"] = k
            rows[k] = row
            spent[k] = cost
            notes += [n for n in layer_notes if n not in notes]
            done += 1
            if progress is not None:
                progress(done, len(todo), row["name"])
        if costs is not None:
            costs += [{"name": layer.name, "N": layer.N, "M": layer.M, "rf": layer.rf, **cost}
                      for layer, cost in zip(todo, spent, strict=True)]
    finally:
        if own is not None:
            own.close()
    return SpectralResult(rows, skipped, summarize(rows), None, notes)
