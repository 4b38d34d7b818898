"""The `irtools` command line: inspect models and list passes.

Every user error is one line on stderr and exit code 2; `--debug` shows the traceback.
"""

from __future__ import annotations

import contextlib
import json
import sys
from typing import Any

import click

from irtools import files, options
from irtools.errors import IrtoolsError, own_words, printable


def _fail(message: str, code: int = 2) -> None:
    click.echo(f"irtools: error: {message}", err=True)
    sys.exit(code)


#: Modules whose warnings are not the user's business (a second line on stderr, about the library's internals).
_LIBRARY_MODULES = (r"(numpy|scipy|onnx|onnx_ir|onnxscript|onnxruntime|torch|tensorflow|tf2onnx|keras|jax|flax|"
                    r"transformers|numba|sympy|h5py|pandas|pyarrow|distributed|dask)(\..*)?$")


def _quiet_library_warnings(warnings) -> None:
    """Hide what the libraries warn about inside themselves (their deprecations, their internals), not
    everything: a warning raised in irtools' own code (a numpy overflow in a metric, say) is a bug to fix
    and is shown. `--debug` shows them all."""
    warnings.filterwarnings("ignore", module=_LIBRARY_MODULES)


#: Loggers of the libraries that read a model's bytes, whose records are about what they make of them: with no
#: handler configured, logging's last resort printed them on stderr, lines beside irtools' own (onnx-ir's
#: "Initializer tensor must have a name ... Skipping this initializer", "Attribute 'x' contains invalid UTF-8
#: bytes", for a file that says so). What irtools has to say about a file is in its notes and its errors.
_LIBRARY_LOGGERS = ("onnx", "onnx_ir", "onnxscript", "onnxruntime", "numba", "h5py", "gguf", "tf2onnx", "jax2onnx")


class _QuietLibraryLogs:
    """Within it (unless `--debug`), the records of `_LIBRARY_LOGGERS` below CRITICAL + 1 are dropped; their
    levels are restored after."""

    def __enter__(self):
        import logging

        self.saved = [(lg, lg.level) for lg in map(logging.getLogger, _LIBRARY_LOGGERS)]
        for lg, _ in self.saved:
            lg.setLevel(logging.CRITICAL + 1)
        return self

    def __exit__(self, *exc) -> None:
        for lg, level in self.saved:
            lg.setLevel(level)


class _Group(click.Group):
    """Turns every error into one line on stderr (exit 2), unless --debug is given."""

    def invoke(self, ctx: click.Context) -> Any:
        import warnings

        debug = "--debug" in sys.argv[1:] or (ctx.params or {}).get("debug", False)
        try:
            with warnings.catch_warnings(), contextlib.nullcontext() if debug else _QuietLibraryLogs():
                if not debug:
                    _quiet_library_warnings(warnings)
                return super().invoke(ctx)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except IrtoolsError as exc:
            if debug:
                raise
            _fail(str(exc))
        except KeyboardInterrupt:
            _fail("interrupted", 130)
        except MemoryError:
            _fail("out of memory")
        except Exception as exc:  # a bug or an input nothing foresaw: still one line
            if debug:
                raise
            first = own_words(str(exc).splitlines()[0]) if str(exc) else ""  # Python's advice is not for a user
            _fail(f"unexpected {type(exc).__name__}: {printable(first)} (run with --debug for the traceback)")


def _debug_option(f):
    return click.option("--debug", is_flag=True, hidden=True, help="Show tracebacks.")(f)


def _max_memory_option(f):
    """--max-memory, for the commands that analyse in this process."""
    return click.option("--max-memory", default=None, metavar="SIZE", callback=_set_budget, expose_value=False,
                        help="Refuse a model whose declared work needs more than SIZE in one allocation (e.g. 2G; "
                             "default: half the available memory).")(f)


def _set_budget(ctx, param, value):
    from irtools import budget

    budget.set_limit(value)


def _note(text: str) -> None:
    click.echo(f"irtools: note: {printable(text)}", err=True)


def _json(data: Any) -> str:
    """JSON text in which non-finite numbers (e.g. log2 of a zero surprisal) become null."""
    return json.dumps(files.json_safe(data), indent=2, allow_nan=False) + "\n"


def _emit(text: str, output: str | None, inputs: list[str]) -> None:
    if output is None or files.means_stdout(output):
        click.echo(text, nl=not text.endswith("\n"))
    else:
        files.write_text_atomic(files.check_output_path(output, inputs), text)


# -- inspect of a weights-only source ---------------------------------------------------------
def _stored_tensors(opened, source: Any, opts) -> dict | None:
    """{name: (shape, dtype name)} of every tensor of a weights file (headers only; values are not
    read), or None where the source is not one the weights-file reader knows."""
    if opened.kind != "weights" or not isinstance(source, str):
        return None
    try:
        from irtools.frontends import weights_file

        reader = getattr(weights_file, "read_weights", None)
        if reader is None:
            return None
        stored = reader(source, trust=opts.trust)
    except (ImportError, IrtoolsError):
        return None
    return {name: (tuple(int(d) for d in t.shape), t.dtype) for name, t in stored.items()}


def weights_summary(opened, source: Any, opts) -> dict:
    """What `irtools inspect` shows of a weights-only source (`irtools.passes.summary.weights_summary`),
    with every tensor of a weights file, not only those behind a layer."""
    from irtools.passes.summary import weights_summary as summarise

    return summarise(opened.name, opened.kind, opened.layers or [], _stored_tensors(opened, source, opts),
                     metadata=opened.metadata, notes=opened.notes)


def _render_weights_summary(data: dict, color: bool = False) -> str:
    import io

    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    buf = io.StringIO()
    con = Console(file=buf, width=160, force_terminal=color, no_color=not color, highlight=False)
    p = data["parameters"]
    size = f"{p['bytes']:,} bytes" if p["bytes"] is not None else "bytes unknown"
    con.print(f"{escape(printable(str(data['model'])))}: weights only ({escape(data['kind'])}), {p['tensors']} "
              f"tensors, {p['scalars']:,} scalars, {size}; {p['layers']} analysable layers from "
              f"{p['analysed_tensors']} tensors")
    extras = list(dict.fromkeys(k for t in data["tensors"] for k in t
                                if k not in ("name", "shape", "dtype", "scalars", "bytes", "layers")))
    t = Table(title="Tensors", title_justify="left")
    for col in ("name", "shape", "dtype", "scalars", "bytes", "layers", *extras):
        t.add_column(escape(col), justify="right" if col in ("scalars", "bytes") else "left")
    for r in data["tensors"]:
        cells = [printable(str(r["name"])), "x".join(map(str, r["shape"])) or "scalar", r["dtype"] or "?",
                 f"{r['scalars']:,}", f"{r['bytes']:,}" if r["bytes"] is not None else "?",
                 str(len(r["layers"])) if r["layers"] else "-"]
        cells += ["" if r.get(k) is None else printable(str(r.get(k))) for k in extras]
        t.add_row(*map(escape, cells))
    con.print(t)
    return buf.getvalue() + _render_metadata(data["metadata"], data["notes"])


def _render_metadata(metadata: dict, notes: list[str]) -> str:
    """The source's metadata (one `key: value` line each) and notes, after a summary table."""
    lines = []
    if metadata:
        lines.append("Metadata")
        for key, value in metadata.items():
            text = value if isinstance(value, str) else json.dumps(files.json_safe(value), allow_nan=False)
            lines.append(f"  {printable(str(key))}: {printable(str(text))}")
    for note in notes or []:
        lines.append(f"note: {printable(note)}")
    return "".join(line + "\n" for line in lines)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--plugin", "plugins", multiple=True, metavar="MODULE",
              help="Import MODULE first (it may register passes); repeatable.")
@click.option("--debug", is_flag=True, help="Show tracebacks instead of one-line errors.")
@click.version_option(package_name="irtools")
def main(plugins: tuple[str, ...], debug: bool) -> None:
    """Audit trained neural networks from their weights and graph alone."""
    from irtools.passing import load_plugin

    for module in plugins:
        load_plugin(module)


@main.command()
@click.argument("model", type=click.Path(dir_okay=True, path_type=str))
@options.click_options(only=options.SOURCE_FIELDS)
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=str), help="Write to FILE instead of stdout.")
@_debug_option
def inspect(model: str, fmt: str, output: str | None, debug: bool, **params: Any) -> None:
    """Show a model's inputs, outputs, ops, learnable parameters and structural constants; for a weights-only
    source (safetensors, a state dict, GGUF, ...), its tensors, their totals and the source's metadata."""
    from irtools.frontends import open_source
    from irtools.passing import run_passes

    opts = options.AnalysisOptions.from_cli(params)
    opened = open_source(model, fix_batch=False, **opts.open_kwargs())
    color = output is None and sys.stdout.isatty()
    if not opened.has_graph:
        data = weights_summary(opened, model, opts)
        text = _json(data) if fmt == "json" else _render_weights_summary(data, color=color)
        _emit(text, output, [model])
        return
    ir_model = opened.model
    if opts.input_shapes:  # the user fixed the inputs: every value must now have a static shape
        ir_model.arrays()
    summary = run_passes(ir_model, ["summary"])["summary"]
    if opened.metadata:
        summary["metadata"] = opened.metadata
    if opened.notes:
        summary["notes"] = list(opened.notes)
    if fmt == "json":
        text = _json(summary)
    else:
        from irtools.reports.tables import render_summary

        text = render_summary(summary, color=color) + _render_metadata(opened.metadata, opened.notes)
    _emit(text, output, [model])


@main.command(epilog=options.PARTIAL_HELP)
@click.argument("model", type=click.Path(dir_okay=True, path_type=str))
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table", show_default=True,
              help="csv writes the per-layer table.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=str), help="Write to FILE instead of stdout.")
@click.option("--scheduler", metavar="ADDR", default=None,
              help="A Dask scheduler (tcp://HOST:PORT or a scheduler file): a weights-only model's spectral family "
                   "runs one task per layer on its workers, each reading its tensor from storage they share.")
@options.click_options
@_max_memory_option
@_debug_option
def analyze(model: str, fmt: str, output: str | None, debug: bool, scheduler: str | None, **params: Any) -> None:
    """Spectral (heavy-tailed) and reuse (context-count) metrics of a model."""
    from irtools.analysis import analyze as run_analysis

    opts = options.AnalysisOptions.from_cli(params)  # a bad --metrics fails before any work
    if output is not None and not files.means_stdout(output):  # an output that may not be written: before the work
        files.check_output_path(output, [model] + ([opts.base] if opts.base is not None else []))
    if opts.base is not None:
        if scheduler is not None:
            raise IrtoolsError("--base and --scheduler: a comparison with a base runs in one process")
        if opts.explicit_metrics and "spectral" not in opts.families:
            raise IrtoolsError("--base compares weights (spectral metrics of W - W_base and distances): "
                               "--metrics must include spectral")
        if _same_path(model, opts.base):
            raise IrtoolsError("--base names the model itself: every W - W_base would be zero", opts.base)
        from irtools.finetune import compare

        with _progress() as progress:
            result = compare(model, opts.base, options=opts, progress=progress)
    else:
        with _progress() as progress:
            result = run_analysis(model, opts, progress=progress, scheduler=scheduler)
    for note in result.notes:
        _note(note)
    data = result.to_dict()
    if fmt == "json":
        text = _json(data)
    elif fmt == "csv":
        if result.details is None:
            raise IrtoolsError("--format csv writes the per-layer spectral table: add spectral to --metrics"
                               if "spectral" not in opts.families else
                               f"--format csv writes the per-layer spectral table: {result.left_out['spectral']}")
        from irtools.reports.csvsafe import rows_to_csv  # formulas and control characters made inert; no pandas

        text = rows_to_csv(result.columns, ([row.get(c) for c in result.columns] for row in result.layers))
    else:
        from irtools.reports.tables import render_analysis

        text = render_analysis(data, color=output is None and sys.stdout.isatty())
    _emit(text, output, [model] + ([opts.base] if opts.base is not None else []))  # neither input is replaced
    if result.partial:
        sys.exit(options.EXIT_PARTIAL)


def _same_path(a: str, b: str) -> bool:
    import os

    try:
        return os.path.samefile(a, b)
    except (OSError, TypeError, ValueError):
        return False


class _progress:
    """Progress on stderr while layers are analysed: tensors done, rate and ETA; a bar when stderr is a
    terminal, else (a log, a cluster job) one line every `EVERY` seconds once a run is that long."""

    EVERY = 30.0

    def __enter__(self):
        import time

        self._bar = None
        self._start = self._last = time.perf_counter()
        if sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[rate]}"), TimeRemainingColumn(), transient=True,
                                 console=Console(stderr=True))
            self._bar.start()
            self._task = self._bar.add_task("spectral", total=None, rate="")
        return self._update

    def _update(self, done: int, total: int, name: str) -> None:
        import time

        now = time.perf_counter()
        rate = done / max(now - self._start, 1e-9)
        if self._bar is not None:
            from rich.markup import escape

            # a tensor name is the model's text: escaped (control characters) and never read as rich markup
            self._bar.update(self._task, completed=done, total=total,
                             description=escape(printable(f"spectral {name}")[:60]), rate=f"{rate:.3g} tensors/s")
        elif now - self._last >= self.EVERY:
            self._last = now
            eta = round((total - done) / rate) if rate else 0
            click.echo(f"spectral: {done}/{total} tensors, {rate:.3g} tensors/s, ETA "
                       f"{eta // 3600}:{eta // 60 % 60:02d}:{eta % 60:02d}", err=True)

    def __exit__(self, *exc):
        if self._bar is not None:
            self._bar.stop()
        return False


@main.command()
@click.argument("source", type=str)
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=str),
              help="The ONNX file to write (written whole or not at all).")
@click.option("--framework", type=click.Choice(["auto", "torch", "tf", "jax", "onnx"]), default="auto",
              show_default=True)
@click.option("--input-shape", "input_shapes", multiple=True, metavar="NAME=D1,D2,...",
              help="Input shapes (repeatable); PyTorch sources without example inputs need them.")
@click.option("--opset", default=17, show_default=True)
@click.option("--tolerance", default=1e-4, show_default=True,
              help="Largest allowed absolute difference between the source and onnxruntime.")
@click.option("--trust", is_flag=True,
              help="Allow .pt2 ExportedProgram, TorchScript and SavedModel files (loading them can run code from "
                   "the file).")
@_debug_option
def convert(source: str, output: str, framework: str, input_shapes: tuple[str, ...], opset: int, tolerance: float,
            trust: bool, debug: bool) -> None:
    """Convert SOURCE (file.py:callable, .pt2, TorchScript, .keras/.h5, SavedModel, ONNX) to ONNX and check it runs
    the same."""
    from irtools.convert import convert as run_convert
    from irtools.ir.shapes import parse_input_shapes

    diff = run_convert(source, output, framework=framework, input_shapes=parse_input_shapes(input_shapes) or None,
                       opset=opset, tolerance=tolerance, trust=trust)
    click.echo(f"wrote {output}; max abs difference source vs onnxruntime: {diff:.3g}")


@main.command(epilog=options.PARTIAL_HELP)
@click.argument("models", nargs=-1, required=True, type=str)
@click.option("--accuracy", "accuracies", multiple=True, metavar="NAME=VALUE",
              help="Published accuracy of a model (its path, file name or stem); repeatable.")
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table", show_default=True)
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=str), help="Write to FILE instead of stdout.")
@options.click_options
@_max_memory_option
@_debug_option
def compare(models: tuple[str, ...], accuracies: tuple[str, ...], fmt: str, output: str | None, debug: bool,
            **params: Any) -> None:
    """Rank models by their summary metrics; with accuracies, Kendall tau and R^2 per metric. The summary
    columns are WeightWatcher's names (alpha_weighted is the paper's alpha-hat)."""
    from irtools.reports.compare import compare as run_compare
    from irtools.reports.compare import parse_accuracies

    opts = options.AnalysisOptions.from_cli(params)
    if opts.base is not None:
        raise IrtoolsError("--base: compare sets models side by side; for each model against a base use "
                           "`irtools analyze MODEL --base BASE`, `irtools report ... --base BASE` or `irtools audit`")
    result = run_compare(list(models), parse_accuracies(accuracies) or None, opts)
    for model, reasons in result.get("left_out", {}).items():
        for family, reason in reasons.items():
            _note(f"{model}: {family} metrics left out: {reason}")
    if fmt == "json":
        text = _json(result)
    elif fmt == "csv":
        import pandas as pd

        from irtools.reports.csvsafe import frame_to_csv

        text = frame_to_csv(pd.DataFrame(result["models"]))
    else:
        from irtools.reports.tables import render_comparison

        text = render_comparison(result, color=output is None and sys.stdout.isatty())
    _emit(text, output, list(models))
    if result.get("left_out") and opts.explicit_metrics:
        sys.exit(options.EXIT_PARTIAL)


@main.command()
@click.argument("model", type=click.Path(dir_okay=True, path_type=str))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=str),
              help="The annotated ONNX file to write (written whole or not at all; never the input).")
@options.click_options
@_max_memory_option
@_debug_option
def annotate(model: str, output: str, debug: bool, **params: Any) -> None:
    """Write the per-node metrics into the ONNX model's metadata (shown by Netron); graph and weights unchanged.
    All or nothing: a metric family asked for with --metrics that cannot be computed is an error (exit 2) and no
    file is written."""
    from irtools.reports.annotate import annotate as run_annotate

    opts = options.AnalysisOptions.from_cli(params)
    if opts.base is not None:
        raise IrtoolsError("--base: annotate writes a model's own metrics; for what changed against a base use "
                           "`irtools analyze MODEL --base BASE` or `irtools report MODEL --base BASE -o page.html`")
    with _progress() as progress:
        done = run_annotate(model, output, progress=progress, allow_partial=False, **opts.analyze_kwargs())
    click.echo(f"wrote {done.output}: metrics on {done.metric_nodes} nodes, context counts on "
               f"{done.context_nodes} nodes, {done.skipped_nodes} skipped, {done.model_keys} model metadata keys")


@main.command(epilog=options.PARTIAL_HELP)
@click.argument("models", nargs=-1, required=True, type=str)
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=str),
              help="The HTML file to write (self-contained; written whole or not at all).")
@click.option("--accuracy", "accuracies", multiple=True, metavar="NAME=VALUE",
              help="Published accuracy of a model, for the comparison table; repeatable.")
@options.click_options
@_max_memory_option
@_debug_option
def report(models: tuple[str, ...], output: str, accuracies: tuple[str, ...], debug: bool, **params: Any) -> None:
    """One self-contained HTML page: summaries, sortable per-layer table, ESDs, correlation flow and context
    counts by depth; with several models, overlaid plots and the comparison table (WeightWatcher's summary
    names: alpha_weighted is the paper's alpha-hat). Given an `irtools audit` folder: each summary metric
    against the series order (and the accuracies, with Kendall tau) and the distribution of alpha per layer
    type (the analysis options are the audit's own then)."""
    from irtools.reports.compare import parse_accuracies

    opts = options.AnalysisOptions.from_cli(params)
    # a bad output path fails before any work (the base's folder included)
    files.check_output_path(output, [*models, *([opts.base] if opts.base is not None else [])])
    if opts.base is not None and any(_same_path(m, opts.base) for m in models):
        raise IrtoolsError("--base names a model of the report itself: every W - W_base would be zero", opts.base)
    from irtools.audit.results import is_audit_dir

    if len(models) == 1 and is_audit_dir(models[0]):
        from irtools.reports.series import write_series_report

        write_series_report(models[0], output, accuracies=parse_accuracies(accuracies) or None)
        click.echo(f"wrote {output}")
        return
    if opts.base is not None:  # each model against the base: model-vs-base alpha, alpha by depth, what moved
        from irtools.finetune import compare
        from irtools.reports.finetune import drift_section, finetune_section
        from irtools.reports.html import page

        sections, results = [], []
        with _progress() as progress:
            for model in models:
                result = compare(model, opts.base, options=opts, progress=progress)
                for note in result.notes:
                    _note(note)
                results.append(result)
                sections.append(finetune_section(result))
        if len(results) > 1:  # several fine-tunes of one base: how far each moved, side by side
            sections.insert(0, drift_section(results))
        files.write_text_atomic(files.check_output_path(output, [*models, opts.base]),
                                page("irtools: fine-tunes against their base", "".join(sections)))
        click.echo(f"wrote {output}")
        return
    from irtools.reports.html import write_report

    reports = write_report(list(models), output, accuracies=parse_accuracies(accuracies) or None,
                           **opts.analyze_kwargs())
    for r in reports:
        for family, reason in r.analysis.left_out.items():
            _note(f"{r.name}: {family} metrics left out: {reason}")
    click.echo(f"wrote {output}")
    if any(r.analysis.partial for r in reports):
        sys.exit(options.EXIT_PARTIAL)


@main.command()
@click.argument("sources", nargs=-1, required=True, type=str)
@click.option("-o", "--output", "outdir", required=True, type=click.Path(file_okay=False, path_type=str),
              help="The audit folder: models/ (one result per model), summary and layers tables.")
@click.option("--scheduler", default=None, metavar="ADDRESS|FILE",
              help="Run on an existing Dask cluster (tcp://HOST:PORT or a scheduler file) instead of an embedded "
                   "local one.")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Worker processes of the embedded cluster (default: one per core).")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=None, metavar="SECONDS",
              help="Give up a model after SECONDS (a failed row).")
@click.option("--memory-limit", default=None, metavar="SIZE",
              help="Memory per model (and per embedded worker), e.g. 8G; a model over it is a failed row "
                   "(default: the worker's limit, the machine's memory shared by the workers).")
@click.option("--retries", type=click.IntRange(min=0), default=2, show_default=True,
              help="Times a task that raised is run again.")
@click.option("--split-over", default=None, metavar="SIZE",
              help="Split a model whose files exceed SIZE (weights-only or ONNX) into one task per weight matrix, "
                   "each reading its tensor by offset; 0: never. Default: 2G.")
@click.option("--series", is_flag=True, help="Order the models by the step or epoch number in their names.")
@click.option("--retry-failed", is_flag=True, help="Analyse again the models whose earlier result is a failure.")
@click.option("--recheck", is_flag=True,
              help="Analyse every model again, trusting no earlier result (each is replaced only when its new one "
                   "is written). Without it, earlier results are still read whole first; damaged ones are moved to "
                   "OUTDIR/models/.damaged/ and analysed again.")
@click.option("--format", "fmt", type=click.Choice(["parquet", "csv"]), default="parquet", show_default=True,
              help="Format of summary and layers.")
@click.option("-q", "--quiet", is_flag=True, help="No progress on stderr.")
@options.click_options
@_debug_option
def audit(sources: tuple[str, ...], outdir: str, scheduler: str | None, workers: int | None, timeout: float | None,
          memory_limit: str | None, retries: int, split_over: str | None, series: bool, retry_failed: bool,
          recheck: bool, fmt: str, quiet: bool, debug: bool, **params: Any) -> None:
    """Audit many models (files, model folders, globs, or a .txt list of them; one task each) on Dask: an
    embedded local cluster, or any cluster with --scheduler. One Parquet result per model under OUTDIR/models,
    then OUTDIR/summary and OUTDIR/layers; running it again analyses only the models without a result.
    Every model gets the same analysis options as `irtools analyze`.

    Exit code 0: every model analysed with every family asked for; 2: an error, no audit; 3: partial: some
    models failed, or a metric family asked for with --metrics was left out of some (their rows say why: the
    error and notes columns, and families, the families each model got)."""
    from irtools.audit.runner import run_audit
    from irtools.budget import parse_size

    if scheduler is not None and workers is not None:
        raise IrtoolsError("--workers sizes the embedded cluster; an existing one (--scheduler) keeps its own")
    if files.long_working_directory():  # multiprocessing's workers chdir to it by name, and fail
        raise IrtoolsError(f"the working directory's path is longer than the system's limit ({files.PATH_MAX} bytes): "
                           "audit's worker processes cannot start in it; run audit from a shorter folder")
    opts = options.AnalysisOptions.from_cli(params)
    limit = parse_size(memory_limit, "--memory-limit") if memory_limit is not None else None
    split = None if split_over is None else 0 if split_over.strip() == "0" else parse_size(split_over, "--split-over")
    result = run_audit(list(sources), outdir, opts, series=series, scheduler=scheduler, workers=workers,
                       timeout=timeout, memory_limit=limit, retries=retries, fmt=fmt, retry_failed=retry_failed,
                       quiet=quiet, recheck=recheck, split_over=split, debug=debug)
    partial = _partial_rows(result.summary, opts)
    if not quiet:
        click.echo(f"audit: {len(result.summary)} models, {result.failed} failed, {result.analysed} analysed in "
                   f"this run; wrote {', '.join(result.written)}"
                   + (f"; {partial} with a metric family left out" if partial else ""), err=True)
    if result.failed or partial:
        sys.exit(options.EXIT_PARTIAL)


def _partial_rows(summary, opts) -> int:
    """Models analysed without every family asked for explicitly (0 without --metrics)."""
    if not opts.explicit_metrics or "families" not in getattr(summary, "columns", ()):
        return 0
    asked = set(opts.families)
    ok = summary[summary["status"] == "ok"]
    return int(sum(not asked <= set(str(f or "").split(",")) for f in ok["families"]))


@main.command("passes")
@_debug_option
def list_passes_cmd(debug: bool) -> None:
    """List the registered passes with one-line descriptions."""
    from irtools.passing import list_passes

    for cls in list_passes():
        opts = ", ".join(f"{f.name}={f.default!r}" for f in cls.options())
        click.echo(f"{cls.name:<16} {cls.description()}" + (f"  [{opts}]" if opts else ""))


def _invoke() -> int:
    """Run `main` and return the exit code. click's own usage errors (an unknown option, a missing
    argument) are one `irtools: error:` line with exit 2, like every other error; a bare
    `irtools` prints the help."""
    try:
        main.main(prog_name="irtools", standalone_mode=False)  # --help, --version: click's Exit, returned
        return 0
    except click.exceptions.NoArgsIsHelpError as exc:
        click.echo(exc.ctx.get_help(), err=True)
        return exc.exit_code
    except click.ClickException as exc:
        ctx = getattr(exc, "ctx", None)
        hint = f" (irtools {ctx.info_name} --help)" if ctx is not None and ctx.parent is not None else \
            " (irtools --help)"
        click.echo(f"irtools: error: {printable(exc.format_message())}{hint}", err=True)
        return exc.exit_code
    except click.exceptions.Abort:
        click.echo("irtools: error: interrupted", err=True)
        return 130
    except SystemExit as exc:
        if exc.code is None:
            return 0
        if not isinstance(exc.code, int):
            print(exc.code, file=sys.stderr)
            return 1
        return exc.code


def run() -> None:
    """The console script: `main`, then leave without tearing the interpreter down.

    Tearing down the modules a command imported (onnx_ir's sympy, numba's LLVM) took 0.15-0.3 s
    after every command, a quarter of `irtools analyze` on a small model. By the time `main`
    returns, output files are written whole and closed; so the streams are flushed, the atexit
    handlers run (temporary directories are removed), and the process exits with `os._exit`."""
    import atexit
    import os

    try:
        files.load_native_libraries_safely()  # a working directory past PATH_MAX: torch's oneMKL would abort
    except IrtoolsError as exc:
        _fail(str(exc))
    code = _invoke()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe (`irtools ... | head`): nothing left to say
            pass
    os._exit(code)


if __name__ == "__main__":  # pragma: no cover
    run()
