"""The `irtools` command line: inspect models and list passes.

Every user error is one line on stderr and exit code 2; `--debug` shows the traceback.
"""

from __future__ import annotations

import functools
import json
import sys
from typing import Any

import click

from irtools import files
from irtools.errors import IrtoolsError, printable


def _fail(message: str, code: int = 2) -> None:
    click.echo(f"irtools: error: {message}", err=True)
    sys.exit(code)


class _Group(click.Group):
    """Turns every error into one line on stderr (exit 2), unless --debug is given."""

    def invoke(self, ctx: click.Context) -> Any:
        import warnings

        debug = "--debug" in sys.argv[1:] or (ctx.params or {}).get("debug", False)
        try:
            with warnings.catch_warnings():  # library warnings (numpy, onnx_ir) would be a second line
                if not debug:
                    warnings.simplefilter("ignore")
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
            _fail(f"unexpected {type(exc).__name__}: {printable(str(exc).splitlines()[0]) if str(exc) else ''} "
                  "(run with --debug for the traceback)")


def _debug_option(f):
    return click.option("--debug", is_flag=True, hidden=True, help="Show tracebacks.")(f)


def _source_options(f):
    """--layout and --trust, for the commands that read weights files and framework sources."""
    f = click.option("--trust", is_flag=True,
                     help="Allow full unpickling of PyTorch files, .pt2 ExportedProgram, TorchScript and TensorFlow "
                          "SavedModel files (runs code from the file: only for files you trust).")(f)
    return click.option("--layout", type=click.Choice(["torch", "keras"]), default="torch", show_default=True,
                        help="Kernel layout of weights-only files: torch (out, in, k...) or keras (k..., in, out)."
                        )(f)


def _device_option(f):
    return click.option("--device", default="auto", show_default=True, metavar="auto|cpu|cuda|cuda:N",
                        help="Where eigenvalues are computed: a GPU when one is usable (auto), the CPU, or a CUDA "
                             "device; the numbers are the same (float64 everywhere).")(f)


def _layer_options(f):
    """Which layers are analysed and how (analyze, audit)."""
    options = [
        click.option("--min-evals", default=8, show_default=True, help="Skip layers with fewer eigenvalues."),
        click.option("--max-evals", default=15000, show_default=True, help="Skip layers with more eigenvalues."),
        click.option("--max-n", default=50000, show_default=True, help="Skip layers whose larger side N exceeds this."),
        click.option("--no-limits", is_flag=True,
                     help="Analyse every layer whatever its size (lifts the three limits)."),
        click.option("--conv-slices", is_flag=True, help="One row per conv kernel position instead of one pooled ESD."),
        click.option("--split-qkv", is_flag=True, help="Split fused (d, 3d) projections into q, k and v."),
        click.option("--randomize", is_flag=True, help="Also compare with element-shuffled weights (rand_distance)."),
        click.option("--mp-fit", is_flag=True, help="Also fit the Marchenko-Pastur bulk (num_spikes, mp_softrank)."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def _run_options(f):
    """--device, --small-n-xmin and --max-memory, for the commands that analyse."""
    f = _device_option(f)
    f = click.option("--small-n-xmin", type=click.Choice(["D", "J"]), default="D", show_default=True,
                     help="xmin rule for spectra under 20 eigenvalues: D = what WeightWatcher 0.7.7 reports (argmin "
                          "D), J = its intermediate J = D - 0.868/sqrt(n) choice.")(f)
    return click.option("--max-memory", default=None, metavar="SIZE", callback=_set_budget, expose_value=False,
                        help="Refuse a model whose declared work needs more than SIZE in one allocation (e.g. 2G; "
                             "default: half the available memory).")(f)


def _set_budget(ctx, param, value):
    from irtools import budget

    budget.set_limit(value)


def _model_options(f):
    @click.argument("model", type=click.Path(dir_okay=True, path_type=str))
    @click.option("--input-shape", "input_shapes", multiple=True, metavar="NAME=D1,D2,...",
                  help="Fix the dims of a dynamic input (repeatable), e.g. image=1,3,224,224.")
    @functools.wraps(f)
    def wrapper(*args, **kwargs):
        return f(*args, **kwargs)

    return wrapper


def _load(model: str, input_shapes: tuple[str, ...]):
    from irtools.frontends import open_source
    from irtools.ir.shapes import parse_input_shapes

    opened = open_source(model, input_shapes=parse_input_shapes(input_shapes), fix_batch=False)
    if not opened.has_graph:
        raise IrtoolsError("inspect shows a graph; this file holds only weights (analyze it instead)", model)
    return opened.model


def _json(data: Any) -> str:
    """JSON text in which non-finite numbers (e.g. log2 of a zero surprisal) become null."""
    return json.dumps(files.json_safe(data), indent=2, allow_nan=False) + "\n"


def _emit(text: str, output: str | None, inputs: list[str]) -> None:
    if output is None or files.means_stdout(output):
        click.echo(text, nl=not text.endswith("\n"))
    else:
        files.write_text_atomic(files.check_output_path(output, inputs), text)


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
@_model_options
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=str), help="Write to FILE instead of stdout.")
@_debug_option
def inspect(model: str, input_shapes: tuple[str, ...], fmt: str, output: str | None, debug: bool) -> None:
    """Show a model's inputs, outputs, ops, learnable parameters and structural constants."""
    from irtools.passing import run_passes

    ir_model = _load(model, input_shapes)
    if input_shapes:  # the user fixed the inputs: every value must now have a static shape
        ir_model.arrays()
    summary = run_passes(ir_model, ["summary"])["summary"]
    if fmt == "json":
        text = _json(summary)
    else:
        from irtools.reports.tables import render_summary

        text = render_summary(summary, color=output is None and sys.stdout.isatty())
    _emit(text, output, [model])


@main.command()
@_model_options
@click.option("--metrics", default=None, metavar="LIST",
              help="Comma-separated metric families: spectral, reuse (default: both; reuse is left out with a note "
                   "when the graph cannot be counted).")
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table", show_default=True,
              help="csv writes the per-layer table.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=str), help="Write to FILE instead of stdout.")
@_layer_options
@_source_options
@_run_options
@click.option("--eigen-method", type=click.Choice(["auto", "svd", "gram"]), default="auto", show_default=True,
              help="Eigenvalues from the Gram matrix, the SVD, or whichever is faster (auto).")
@click.option("--fix-fingers", type=click.Choice(["clip_xmax", "xmin_peak"]), default=None,
              help="WeightWatcher's fix for spurious large eigenvalues: clip_xmax refits without the largest ones "
                   "(adds num_fingers, raw_alpha); xmin_peak searches xmin near the peak of the log ESD.")
@_debug_option
def analyze(model: str, input_shapes: tuple[str, ...], metrics: str | None, fmt: str, output: str | None,
            min_evals: int, max_evals: int, max_n: int, no_limits: bool, conv_slices: bool, split_qkv: bool,
            randomize: bool, mp_fit: bool, trust: bool, layout: str, device: str, small_n_xmin: str,
            eigen_method: str, fix_fingers: str | None, debug: bool) -> None:
    """Spectral (heavy-tailed) and reuse (context-count) metrics of a model."""
    from irtools.analysis import analyze as run_analysis
    from irtools.analysis import parse_metrics
    from irtools.ir.shapes import parse_input_shapes

    if metrics is not None:
        parse_metrics(metrics)  # a bad --metrics fails before any work
    if no_limits:
        min_evals, max_evals, max_n = 1, 0, 0
    with _progress() as progress:
        result = run_analysis(
            model, metrics=metrics, input_shapes=parse_input_shapes(input_shapes), min_evals=min_evals,
            max_evals=max_evals, max_n=max_n, conv_slices=conv_slices, split_qkv=split_qkv, randomize=randomize,
            mp_fit=mp_fit, method=eigen_method, progress=progress, trust=trust, layout=layout, device=device,
            small_n_xmin=small_n_xmin, fix_fingers=fix_fingers,
        )
    for note in result.notes:
        click.echo(f"irtools: note: {printable(note)}", err=True)
    data = result.to_dict()
    if fmt == "json":
        text = _json(data)
    elif fmt == "csv":
        if result.details is None:
            raise IrtoolsError("--format csv writes the per-layer spectral table: add spectral to --metrics")
        text = result.details.to_csv(index=False)
    else:
        from irtools.reports.tables import render_analysis

        text = render_analysis(data, color=output is None and sys.stdout.isatty())
    _emit(text, output, [model])


class _progress:
    """A progress bar on stderr while layers are analysed (only when stderr is a terminal)."""

    def __enter__(self):
        self._bar = None
        if sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import Progress

            self._bar = Progress(transient=True, console=Console(stderr=True))
            self._bar.start()
            self._task = self._bar.add_task("spectral", total=None)
            return self._update
        return None

    def _update(self, done: int, total: int, name: str) -> None:
        self._bar.update(self._task, completed=done, total=total, description=f"spectral {name}"[:60])

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


@main.command()
@click.argument("models", nargs=-1, required=True, type=str)
@click.option("--accuracy", "accuracies", multiple=True, metavar="NAME=VALUE",
              help="Published accuracy of a model (its path, file name or stem); repeatable.")
@click.option("--input-shape", "input_shapes", multiple=True, metavar="NAME=D1,D2,...")
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table", show_default=True)
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=str), help="Write to FILE instead of stdout.")
@_source_options
@_run_options
@_debug_option
def compare(models: tuple[str, ...], accuracies: tuple[str, ...], input_shapes: tuple[str, ...], fmt: str,
            output: str | None, layout: str, trust: bool, device: str, small_n_xmin: str, debug: bool) -> None:
    """Rank models by their summary metrics; with accuracies, Kendall tau and R^2 per metric."""
    from irtools.reports.compare import compare as run_compare
    from irtools.reports.compare import parse_accuracies
    from irtools.ir.shapes import parse_input_shapes

    result = run_compare(list(models), parse_accuracies(accuracies) or None,
                         input_shapes=parse_input_shapes(input_shapes), layout=layout, trust=trust, device=device,
                         small_n_xmin=small_n_xmin)
    if fmt == "json":
        text = _json(result)
    elif fmt == "csv":
        import pandas as pd

        text = pd.DataFrame(result["models"]).to_csv(index=False)
    else:
        from irtools.reports.tables import render_comparison

        text = render_comparison(result, color=output is None and sys.stdout.isatty())
    _emit(text, output, list(models))


@main.command()
@_model_options
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=str),
              help="The annotated ONNX file to write (written whole or not at all; never the input).")
@click.option("--metrics", default=None, metavar="LIST", help="Comma-separated metric families: spectral, reuse.")
@click.option("--conv-slices", is_flag=True, help="One row per conv kernel position instead of one pooled ESD.")
@click.option("--no-limits", is_flag=True, help="Analyse every layer whatever its size.")
@_source_options
@_run_options
@_debug_option
def annotate(model: str, input_shapes: tuple[str, ...], output: str, metrics: str | None, conv_slices: bool,
             no_limits: bool, layout: str, trust: bool, device: str, small_n_xmin: str, debug: bool) -> None:
    """Write the per-node metrics into the ONNX model's metadata (shown by Netron); graph and weights unchanged."""
    from irtools.analysis import parse_metrics
    from irtools.reports.annotate import annotate as run_annotate
    from irtools.ir.shapes import parse_input_shapes

    if metrics is not None:
        parse_metrics(metrics)
    limits = dict(min_evals=1, max_evals=0, max_n=0) if no_limits else {}
    with _progress() as progress:
        done = run_annotate(model, output, metrics=metrics, input_shapes=parse_input_shapes(input_shapes),
                            conv_slices=conv_slices, progress=progress, layout=layout, trust=trust, device=device,
                            small_n_xmin=small_n_xmin,
                            **limits)
    click.echo(f"wrote {done.output}: metrics on {done.metric_nodes} nodes, context counts on "
               f"{done.context_nodes} nodes, {done.skipped_nodes} skipped, {done.model_keys} model metadata keys")


@main.command()
@click.argument("models", nargs=-1, required=True, type=str)
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=str),
              help="The HTML file to write (self-contained; written whole or not at all).")
@click.option("--input-shape", "input_shapes", multiple=True, metavar="NAME=D1,D2,...")
@click.option("--accuracy", "accuracies", multiple=True, metavar="NAME=VALUE",
              help="Published accuracy of a model, for the comparison table; repeatable.")
@click.option("--no-limits", is_flag=True, help="Analyse every layer whatever its size.")
@_source_options
@_run_options
@_debug_option
def report(models: tuple[str, ...], output: str, input_shapes: tuple[str, ...], accuracies: tuple[str, ...],
           no_limits: bool, layout: str, trust: bool, device: str, small_n_xmin: str, debug: bool) -> None:
    """One self-contained HTML page: summaries, sortable per-layer table, ESDs, correlation flow and context
    counts by depth; with several models, overlaid plots and the comparison table. Given an `irtools audit`
    folder: each summary metric against the series order (and the accuracies, with Kendall tau) and the
    distribution of alpha per layer type."""
    from irtools.reports.compare import parse_accuracies

    files.check_output_path(output, models)  # a bad output path fails before any work
    from irtools.audit.results import is_audit_dir

    if len(models) == 1 and is_audit_dir(models[0]):
        from irtools.reports.series import write_series_report

        write_series_report(models[0], output, accuracies=parse_accuracies(accuracies) or None)
        click.echo(f"wrote {output}")
        return
    from irtools.reports.html import write_report
    from irtools.ir.shapes import parse_input_shapes

    limits = dict(min_evals=1, max_evals=0, max_n=0) if no_limits else {}
    write_report(list(models), output, input_shapes=parse_input_shapes(input_shapes),
                 accuracies=parse_accuracies(accuracies) or None, layout=layout, trust=trust, device=device,
                 small_n_xmin=small_n_xmin, **limits)
    click.echo(f"wrote {output}")


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
@click.option("--series", is_flag=True, help="Order the models by the step or epoch number in their names.")
@click.option("--retry-failed", is_flag=True, help="Analyse again the models whose earlier result is a failure.")
@click.option("--format", "fmt", type=click.Choice(["parquet", "csv"]), default="parquet", show_default=True,
              help="Format of summary and layers.")
@click.option("-q", "--quiet", is_flag=True, help="No progress on stderr.")
@click.option("--metrics", default=None, metavar="LIST", help="Comma-separated metric families: spectral, reuse.")
@click.option("--input-shape", "input_shapes", multiple=True, metavar="NAME=D1,D2,...",
              help="Fix the dims of a dynamic input (repeatable).")
@_layer_options
@click.option("--eigen-method", type=click.Choice(["auto", "svd", "gram"]), default="auto", show_default=True)
@_source_options
@_device_option
@_debug_option
def audit(sources: tuple[str, ...], outdir: str, scheduler: str | None, workers: int | None, timeout: float | None,
          memory_limit: str | None, retries: int, series: bool, retry_failed: bool, fmt: str, quiet: bool,
          metrics: str | None, input_shapes: tuple[str, ...], min_evals: int, max_evals: int, max_n: int,
          no_limits: bool, conv_slices: bool, split_qkv: bool, randomize: bool, mp_fit: bool, eigen_method: str,
          layout: str, trust: bool, device: str, debug: bool) -> None:
    """Audit many models (files, model folders, globs, or a .txt list of them; one task each) on Dask: an
    embedded local cluster, or any cluster with --scheduler. One Parquet result per model under OUTDIR/models,
    then OUTDIR/summary and OUTDIR/layers; running it again analyses only the models without a result.
    Exit code 0: every model analysed; 3: some failed (their rows say why)."""
    from irtools.analysis import parse_metrics
    from irtools.audit.results import AuditOptions
    from irtools.audit.runner import run_audit
    from irtools.budget import parse_size
    from irtools.ir.shapes import parse_input_shapes

    if scheduler is not None and workers is not None:
        raise IrtoolsError("--workers sizes the embedded cluster; an existing one (--scheduler) keeps its own")
    if metrics is not None:
        metrics = ",".join(parse_metrics(metrics))
    if no_limits:
        min_evals, max_evals, max_n = 1, 0, 0
    shapes = parse_input_shapes(input_shapes) or {}
    options = AuditOptions(metrics=metrics, input_shapes=tuple((k, tuple(v)) for k, v in shapes.items()),
                           min_evals=min_evals, max_evals=max_evals, max_n=max_n, conv_slices=conv_slices,
                           split_qkv=split_qkv, randomize=randomize, mp_fit=mp_fit, method=eigen_method, trust=trust,
                           layout=layout, device=device)
    limit = parse_size(memory_limit) if memory_limit is not None else None
    result = run_audit(list(sources), outdir, options, series=series, scheduler=scheduler, workers=workers,
                       timeout=timeout, memory_limit=limit, retries=retries, fmt=fmt, retry_failed=retry_failed,
                       quiet=quiet)
    if not quiet:
        click.echo(f"audit: {len(result.summary)} models, {result.failed} failed, {result.analysed} analysed in "
                   f"this run; wrote {', '.join(result.written)}", err=True)
    if result.failed:
        sys.exit(3)


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
