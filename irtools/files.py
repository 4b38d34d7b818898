"""Which files irtools may read for a model and how it writes its outputs.

Reading: a model file is untrusted input, and so is every name it holds. `check_input` refuses a
path that is not a regular file (a FIFO would hang, `/dev/zero` would fill memory);
`model_member` is the one rule for the other files a model names (ONNX external data,
safetensors shards, any multi-file format): the file must resolve, symlinks followed, inside the
model's own folder, and be a regular file. Every file read for a model is remembered
(`note_input`), so that no output can replace one of them.

Writing: writers produce into a temporary file beside the target and rename it into place
(whole or not at all), keeping the mode of a file they replace; an output that exists and is
not a regular file (a device, a FIFO, a symlink) or that is one of the inputs is refused, and
the temporaries are removed when the process is stopped by a signal.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import stat
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator

from irtools.errors import IrtoolsError, printable

#: Output names that mean the standard output, not a file (`-o -`, `-o /dev/stdout`).
STDOUT_NAMES = ("-", "/dev/stdout")

_inputs: set[str] = set()  # realpaths of every file read for a model in this process
_temporaries: set[str] = set()  # temporaries being written, removed on SIGTERM/SIGHUP/SIGINT
_lock = threading.Lock()


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a directory")):
        if test(mode):
            return name
    return "not a regular file"


def check_input(path: str | os.PathLike, *, directory: bool = False) -> str:
    """`path` as a string if it is a regular file (symlinks followed), or a directory where
    `directory` allows one; else a one-line error. Remembers it as an input."""
    path = os.fspath(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise IrtoolsError("no such file or directory" if not os.path.islink(path)
                           else "is a symlink to nothing (no such file)", path) from None
    except OSError as exc:
        raise IrtoolsError(f"cannot read: {exc.strerror}", path) from None
    if stat.S_ISREG(st.st_mode) or (directory and stat.S_ISDIR(st.st_mode)):
        note_input(path)
        return path
    raise IrtoolsError(f"is {_kind(st.st_mode)}, not a model file", path)


def model_root(model: str | os.PathLike) -> str:
    """The folder whose files a model may read: the folder of a model file (a directory model:
    itself), as named, not where a symlink to it points. In a Hugging Face cache
    (`<repo>/snapshots/<rev>/[sub/]file -> ../../[../]blobs/<hash>`) it is the repository folder."""
    model = os.path.abspath(os.fspath(model))
    folder = model if os.path.isdir(model) else os.path.dirname(model)
    return os.path.realpath(_cache_repository(folder) or folder)


def _cache_repository(folder: str) -> str | None:
    """The repository folder of a Hugging Face cache snapshot `folder` lies in (the snapshot
    itself or a folder under it, like `onnx/`), or None."""
    parts = folder.split(os.sep)
    for i in range(len(parts) - 2, 0, -1):  # <repo>/snapshots/<rev>/...: the snapshot at parts[i + 1]
        if parts[i] == "snapshots":
            repo = os.sep.join(parts[:i]) or os.sep
            return repo if os.path.isdir(os.path.join(repo, "blobs")) else None
    return None


def model_member(model: str | os.PathLike, name: str, what: str, error: type[IrtoolsError] = IrtoolsError) -> str:
    """The path of the file `name` that the model `model` names (ONNX external data, a shard).

    `name` must be a relative path that resolves, symlinks followed, to a regular file inside
    the model's folder (`model_root`) with no other hard link (a hard link made in the folder can be
    a file from anywhere: onnx refuses them too); `what` describes it (e.g.
    "external data file of tensor 'w'") in the one-line `error`. The file is remembered as an input.
    """
    model = os.fspath(model)
    shown = printable(name)
    if not isinstance(name, str) or not name or "\x00" in name:
        raise error(f"{what} has an empty or invalid file name {shown!r}", model)
    if os.path.isabs(name) or ".." in name.replace("\\", "/").split("/"):
        raise error(f"{what} names {shown!r}, outside the model's folder (refused)", model)
    folder = os.path.dirname(os.path.abspath(model)) if not os.path.isdir(model) else os.path.abspath(model)
    full = os.path.join(folder, name)
    root = model_root(model)
    real = os.path.realpath(full)
    if os.path.commonpath([root, real]) != root:
        raise error(f"{what}: {shown!r} resolves to {printable(real)!r}, outside the model's folder (refused)",
                           model)
    try:
        st = os.stat(real)
    except OSError:
        raise error(f"{what}: {shown!r} is missing", model) from None
    if not stat.S_ISREG(st.st_mode):
        raise error(f"{what}: {shown!r} is {_kind(st.st_mode)}, not a regular file (refused)", model)
    if st.st_nlink > 1:
        raise error(f"{what}: {shown!r} has {st.st_nlink} hard links: it may be a file from outside the model's "
                    "folder (refused; copy it in)", model)
    note_input(real)
    return full


#: The longest path the system resolves (Linux PATH_MAX); a working directory near it breaks native libraries.
PATH_MAX = 4096
#: Native libraries that resolve their own files against the working directory when they load (torch's
#: bundled oneMKL aborts the whole process, "Intel oneMKL FATAL ERROR: Cannot load libtorch_cpu.so",
#: when the working directory's path is longer than PATH_MAX).
_CWD_SENSITIVE = ("torch",)


def long_working_directory() -> bool:
    """Whether the working directory's path is too long for native libraries and process spawning."""
    try:
        cwd = os.getcwd()
    except OSError:  # ENAMETOOLONG (or a removed folder): the path cannot even be named
        return True
    return len(os.fsencode(cwd)) >= PATH_MAX - 256


def load_native_libraries_safely() -> None:
    """When the working directory's path is too long for native libraries (see `_CWD_SENSITIVE`),
    import them once from `/` and come back (through a descriptor, so relative paths keep their
    meaning): the run works instead of aborting. A no-op for an ordinary working directory."""
    if not long_working_directory():
        return
    import importlib  # noqa: PLC0415
    import importlib.util  # noqa: PLC0415
    import sys  # noqa: PLC0415

    wanted = [m for m in _CWD_SENSITIVE if m not in sys.modules and _findable(importlib.util, m)]
    if not wanted:
        return
    try:
        here = os.open(".", os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError as exc:
        raise IrtoolsError(f"cannot open the working directory ({exc.strerror}): run irtools from another folder") \
            from None
    try:
        os.chdir("/")
        for module in wanted:
            with contextlib.suppress(ImportError):
                importlib.import_module(module)
    finally:
        os.fchdir(here)
        os.close(here)


def _findable(util, module: str) -> bool:
    try:
        return util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def note_input(path: str | os.PathLike) -> None:
    """Remember `path` as a file read for a model: no output may replace it."""
    with _lock:
        _inputs.add(os.path.realpath(os.fspath(path)))


def forget_inputs() -> None:
    """Forget the files read so far (a long-lived process starting unrelated work; the CLI runs
    one command per process and never needs it)."""
    with _lock:
        _inputs.clear()


def means_stdout(out: str | os.PathLike | None) -> bool:
    """Whether an output name means the standard output (`-`, `/dev/stdout`)."""
    return out is not None and os.fspath(out) in STDOUT_NAMES


def check_output_path(out: str | os.PathLike, inputs: Iterable[str | os.PathLike] = ()) -> str:
    """Return the output path as a string, refusing one that is not a regular file where it
    exists (a device, a FIFO, a symlink), or that is, or resolves to, any input of the run."""
    out = os.fspath(out)
    try:
        st = os.lstat(out)
    except FileNotFoundError:
        st = None
    except OSError as exc:
        raise IrtoolsError(f"cannot write output: {exc.strerror}", out) from None
    if st is not None and stat.S_ISDIR(st.st_mode):
        raise IrtoolsError("output path is a directory", out)
    if st is not None and stat.S_ISLNK(st.st_mode):
        raise IrtoolsError("output path is a symlink: name the file itself (refused, it would replace the link)", out)
    if st is not None and not stat.S_ISREG(st.st_mode):
        raise IrtoolsError(f"output path is {_kind(st.st_mode)}, not a regular file (refused; for the standard "
                           "output leave -o out)", out)
    parent = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(parent):
        raise IrtoolsError("output directory does not exist", out)
    real = os.path.realpath(out)
    for src in inputs:
        src = os.fspath(src)
        if os.path.exists(src) and (os.path.realpath(src) == real or (st is not None and os.path.samefile(src, out))):
            raise IrtoolsError("output would overwrite the input model", out)
        # an input folder (an audit's OUTDIR, a checkpoint folder): none of its files may be replaced
        if st is not None and os.path.isdir(src) and _inside(real, os.path.realpath(src)):
            raise IrtoolsError("output would overwrite a file of the input folder (refused; write it elsewhere)", out)
    with _lock:
        used = real in _inputs
    if used:
        raise IrtoolsError("output would overwrite a file the input model uses", out)
    return out


def _inside(path: str, folder: str) -> bool:
    try:
        return os.path.commonpath([path, folder]) == folder
    except ValueError:  # different drives, or a mix of absolute and relative paths
        return False


def _umask() -> int:
    """The process umask, read without changing it where the platform allows."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _name_max(directory: str) -> int:
    try:
        return int(os.pathconf(directory, "PC_NAME_MAX"))
    except (OSError, ValueError, AttributeError):
        return 255


@contextlib.contextmanager
def atomic_path(out: str | os.PathLike, suffix: str = "") -> Iterator[str]:
    """Yield a temporary path beside `out`; on success it is renamed to `out`, else removed.

    The output is checked (`check_output_path`) before and again just before the rename (an
    input named by the model may have been read in between); a file replaced keeps its mode.
    """
    out = check_output_path(out)
    directory = os.path.dirname(os.path.abspath(out))
    # the temporary's name: a prefix, random letters and the output's own name, cut so that it stays within the
    # file system's name limit (a valid 250-byte output name must not make an invalid temporary name)
    tail = suffix or os.path.basename(out)
    limit = _name_max(directory) - len(".irtools-") - 12
    while len(os.fsencode(tail)) > limit:
        tail = tail[1:]
    try:  # a folder that takes no new file (read-only, /proc/self): one line, not an unexpected OSError
        fd, tmp = tempfile.mkstemp(prefix=".irtools-", suffix=tail, dir=directory)
        os.close(fd)
    except OSError as exc:
        raise IrtoolsError(f"cannot write output: {exc.strerror or exc}", out) from None
    with temporary(tmp):  # removed on an error or a signal
        yield tmp
        check_output_path(out)
        try:
            mode = stat.S_IMODE(os.stat(out).st_mode)
        except FileNotFoundError:
            mode = 0o666 & ~_umask()  # mkstemp makes it 0600; give it the mode open() would
        try:
            os.chmod(tmp, mode)
            os.replace(tmp, out)
        except OSError as exc:
            raise IrtoolsError(f"cannot write output: {exc.strerror or exc}", out) from None


@contextlib.contextmanager
def temporary(path: str | os.PathLike) -> Iterator[str]:
    """Register a file written beside an output (an ONNX model's `.data` file, written under a
    temporary name) so that a signal or an error removes it, like `atomic_path`'s own."""
    path = os.fspath(path)
    _catch_signals()
    with _lock:
        _temporaries.add(path)
    try:
        yield path
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        raise
    finally:
        with _lock:
            _temporaries.discard(path)


_STOP_SIGNALS = ("SIGTERM", "SIGHUP", "SIGINT")
_caught: dict[int, object] = {}


def _catch_signals() -> None:
    """Once, from the main thread: on SIGTERM/SIGHUP/SIGINT remove the temporaries being
    written, then let the signal do what it did before."""
    if _caught or threading.current_thread() is not threading.main_thread():
        return
    for name in _STOP_SIGNALS:
        signum = getattr(signal, name, None)
        if signum is None:
            continue
        with contextlib.suppress(ValueError, OSError):
            _caught[signum] = signal.signal(signum, _on_signal)


def _on_signal(signum, frame) -> None:
    remove_temporaries()
    previous = _caught.get(signum, signal.SIG_DFL)
    if callable(previous):
        previous(signum, frame)
        return
    if previous == signal.SIG_IGN:
        return
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def remove_temporaries() -> None:
    """Remove every temporary output still being written (signal handlers, atexit)."""
    with _lock:
        pending = list(_temporaries)
        _temporaries.clear()
    for tmp in pending:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def write_text_atomic(out: str | os.PathLike, text: str) -> None:
    """Write `text` to `out` atomically."""
    with atomic_path(out) as tmp:
        try:
            with open(tmp, "w", encoding="utf-8") as fh:
                fh.write(text)
        except OSError as exc:  # a full disk, a quota: the temporary is removed, the output left as it was
            raise IrtoolsError(f"cannot write output: {exc.strerror or exc}", out) from None


def write_atomic(out: str | os.PathLike, writer: Callable[[str], None]) -> None:
    """Call `writer(tmp_path)` and move the result to `out` atomically."""
    with atomic_path(out) as tmp:
        writer(tmp)


def json_safe(x):
    """`x` with non-finite floats as None and numpy scalars as Python numbers, for strict JSON."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    if hasattr(x, "item") and not isinstance(x, (str, bytes)):
        return json_safe(x.item())
    return x
