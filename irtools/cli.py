"""The `irtools` command line: inspect models and list passes.

Every user error is one line on stderr and exit code 2; `--debug` shows the traceback.
"""

from __future__ import annotations

import functools
import json
import math
import sys
from typing import Any

import click

from irtools import _io
from irtools.errors import IrtoolsError


def _fail(message: str, code: int = 2) -> None:
    click.echo(f"irtools: error: {message}", err=True)
    sys.exit(code)


class _Group(click.Group):
    """Turns every error into one line on stderr (exit 2), unless --debug is given."""

    def invoke(self, ctx: click.Context) -> Any:
        debug = "--debug" in sys.argv[1:] or (ctx.params or {}).get("debug", False)
        try:
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
            _fail(f"unexpected {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''} "
                  "(run with --debug for the traceback)")


def _debug_option(f):
    return click.option("--debug", is_flag=True, hidden=True, help="Show tracebacks.")(f)


def _model_options(f):
    @click.argument("model", type=click.Path(dir_okay=True, path_type=str))
    @click.option("--input-shape", "input_shapes", multiple=True, metavar="NAME=D1,D2,...",
                  help="Fix the dims of a dynamic input (repeatable), e.g. image=1,3,224,224.")
    @functools.wraps(f)
    def wrapper(*args, **kwargs):
        return f(*args, **kwargs)

    return wrapper


def _load(model: str, input_shapes: tuple[str, ...]):
    from irtools.model import load
    from irtools.shapes import parse_input_shapes

    return load(model, input_shapes=parse_input_shapes(input_shapes))


def _json(data: Any) -> str:
    """JSON text in which non-finite numbers (e.g. log2 of a zero surprisal) become null."""

    def clean(x):
        if isinstance(x, float):
            return x if math.isfinite(x) else None
        if isinstance(x, dict):
            return {k: clean(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [clean(v) for v in x]
        return x

    return json.dumps(clean(data), indent=2, allow_nan=False) + "\n"


def _emit(text: str, output: str | None, inputs: list[str]) -> None:
    if output is None:
        click.echo(text, nl=not text.endswith("\n"))
    else:
        _io.write_text_atomic(_io.check_output_path(output, inputs), text)


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
        from irtools.tables import render_summary

        text = render_summary(summary, color=output is None and sys.stdout.isatty())
    _emit(text, output, [model])


@main.command()
@_model_options
@click.option("--metrics", default="reuse", show_default=True, metavar="LIST",
              help="Comma-separated metric families to compute: reuse (spectral metrics are not built yet).")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=str), help="Write to FILE instead of stdout.")
@_debug_option
def analyze(model: str, input_shapes: tuple[str, ...], metrics: str, fmt: str, output: str | None, debug: bool) -> None:
    """Compute per-model audit metrics (reuse: context counts and the reusability prior)."""
    from irtools.passing import run_passes

    wanted = [m.strip() for m in metrics.split(",") if m.strip()]
    unknown = [m for m in wanted if m not in ("reuse",)]
    if unknown or not wanted:
        raise IrtoolsError(f"--metrics: unknown or unavailable metric family {', '.join(unknown) or '(none)'} "
                           "(available: reuse)")
    ir_model = _load(model, input_shapes)
    result: dict[str, Any] = {"model": model}
    if "reuse" in wanted:
        result["reuse"] = run_passes(ir_model, ["reuse"])["reuse"]
    if fmt == "json":
        text = _json(result)
    else:
        from irtools.tables import render_reuse

        text = render_reuse(result, color=output is None and sys.stdout.isatty())
    _emit(text, output, [model])


@main.command("passes")
@_debug_option
def list_passes_cmd(debug: bool) -> None:
    """List the registered passes with one-line descriptions."""
    from irtools.passing import list_passes

    for cls in list_passes():
        opts = ", ".join(f"{f.name}={f.default!r}" for f in cls.options())
        click.echo(f"{cls.name:<16} {cls.description()}" + (f"  [{opts}]" if opts else ""))


if __name__ == "__main__":  # pragma: no cover
    main()
