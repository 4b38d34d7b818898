"""What `irtools audit SOURCES...` audits: each argument expanded into models, and series order.

An argument is a model file, a model directory (a Hugging Face-style folder of safetensors, a
SavedModel: one model), a folder of models (each model file or model directory in it, one level
deep: a training run's `checkpoint-500/` folders), a glob, or a text file (`.txt`, `.list`) naming
one source per line (`#` comments; relative paths are relative to the list). Models are audited in
the order given, each once; `series_order` sorts them by the step or epoch number in their names.
A folder of model folders is expanded one level; deeper trees are named with a glob (`run/**/*.onnx`).
"""

from __future__ import annotations

import fnmatch
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from irtools.errors import IrtoolsError

#: Text files that list sources, one per line.
LIST_SUFFIXES = (".txt", ".list")
#: Files a folder of models contributes (the frontends' own suffixes; weights files included).
MODEL_SUFFIXES = (".onnx", ".keras", ".h5", ".hdf5", ".pt2", ".pt", ".pth", ".bin", ".ckpt", ".npz",
                  ".safetensors")
_GLOB_CHARS = re.compile(r"[*?\[]")
#: Directory entries a glob may visit before it is refused (a `/**` pattern over a whole disk).
GLOB_MAX_ENTRIES = 100_000


@dataclass(frozen=True)
class Source:
    """One model to audit: the path as the user named it (after expansion) and its series position."""

    path: str
    step: float | None = None


def is_model_dir(path: str) -> bool:
    """A directory that is one model: a SavedModel, or Hugging Face-style safetensors (with a
    `config.json` or a shard index, or a single safetensors file and no other model file). A folder
    of several safetensors files without either is a folder of models (`step_100.safetensors`, ...)."""
    if not os.path.isdir(path):
        return False
    names = os.listdir(path)
    if "saved_model.pb" in names:
        return True
    shards = [n for n in names if n.endswith(".safetensors")]
    if not shards:
        return False
    if "config.json" in names or "model.safetensors.index.json" in names:
        return True
    others = [n for n in names if n.lower().endswith(MODEL_SUFFIXES) and n not in shards]
    return len(shards) == 1 and not others


def _is_model_file(path: str) -> bool:
    return os.path.isfile(path) and path.lower().endswith(MODEL_SUFFIXES) and not os.path.basename(path).startswith(".")


def _folder_models(path: str) -> list[str]:
    """The models in a folder of models: model files and model directories, sorted by name."""
    out = []
    for name in sorted(os.listdir(path)):
        full = os.path.join(path, name)
        if _is_model_file(full) or is_model_dir(full):
            out.append(full)
    if not out:
        raise IrtoolsError("folder holds no model (model files, or folders of safetensors)", path)
    return out


def _read_list(path: str, seen_lists: tuple[str, ...]) -> list[str]:
    real = os.path.realpath(path)
    if real in seen_lists:
        raise IrtoolsError("list file names itself (directly or through another list)", path)
    base = os.path.dirname(os.path.abspath(path))
    try:
        with open(path, encoding="utf-8") as fh:
            lines = [ln.split("#", 1)[0].strip() for ln in fh]
    except (OSError, UnicodeDecodeError) as exc:
        raise IrtoolsError(f"cannot read the list of sources: {exc}", path) from None
    out = []
    for line in filter(None, lines):
        out.extend(_expand_one(line if os.path.isabs(line) else os.path.join(base, line), seen_lists + (real,)))
    return out


def _name_regex(name: str) -> str:
    """One path component of a glob as a regex that never crosses a '/'."""
    out, i = [], 0
    while i < len(name):
        c = name[i]
        close = name.find("]", i + 2) if c == "[" else -1
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif close > 0:
            body = name[i + 1:close]
            out.append("[" + ("^" + re.escape(body[1:]) if body[0] == "!" else re.escape(body)) + "]")
            i = close
        else:
            out.append(re.escape(c))
        i += 1
    return "".join(out)


def _glob(pattern: str) -> list[str]:
    """The paths `pattern` matches (`*`, `?`, `[...]` within a name, `**` for any folders; names
    starting with '.' only when the pattern says so), found by a walk that never follows a
    symlinked folder (a link loop like /proc/self/root made `glob.glob` run for ever) and visits
    at most `GLOB_MAX_ENTRIES` entries."""
    parts = pattern.split("/")
    static = next(i for i, part in enumerate(parts) if _GLOB_CHARS.search(part))
    root = "/".join(parts[:static]) or ("/" if pattern.startswith("/") else ".")
    prefix = "" if static == 0 and root == "." else root.rstrip("/") + "/"
    rest = parts[static:]
    regex = re.compile("".join(("(?:[^/]+/)*" if p == "**" and k < len(rest) - 1 else ".*" if p == "**" else
                                _name_regex(p) + ("/" if k < len(rest) - 1 else "")) for k, p in enumerate(rest)) + r"\Z")
    hidden = any(p.startswith(".") for p in rest)
    depth = None if "**" in rest else len(rest)
    matches, visited = [], 0
    for folder, dirs, names in os.walk(root, followlinks=False):
        rel = os.path.relpath(folder, root)
        level = 0 if rel == "." else rel.count("/") + 1
        if not hidden:
            dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in dirs + names:
            visited += 1
            if visited > GLOB_MAX_ENTRIES:
                raise IrtoolsError(f"the glob visits more than {GLOB_MAX_ENTRIES:,} entries: name a narrower one",
                                   pattern)
            path = name if rel == "." else f"{rel}/{name}"
            if (hidden or not name.startswith(".")) and regex.match(path):
                matches.append(prefix + path)
        if depth is not None and level + 1 >= depth:
            dirs.clear()  # nothing deeper can match
    return matches


def _snapshot(repo: str) -> str | None:
    """The snapshot of a hub cache repository (`models--ORG--NAME`) that `refs/main` names, else the newest."""
    snapshots = os.path.join(repo, "snapshots")
    try:
        with open(os.path.join(repo, "refs", "main"), encoding="ascii") as fh:
            commit = fh.read(100).strip()
        if commit and os.path.isdir(os.path.join(snapshots, commit)) and "/" not in commit and commit not in (".", ".."):
            return os.path.join(snapshots, commit)
    except (OSError, UnicodeDecodeError):
        pass
    try:
        found = [os.path.join(snapshots, n) for n in os.listdir(snapshots)]
    except OSError:
        return None
    found = [f for f in found if os.path.isdir(f)]
    return max(found, key=os.path.getmtime) if found else None


def _is_hub_repo(path: str) -> bool:
    return os.path.basename(os.path.normpath(path)).startswith("models--") and \
        os.path.isdir(os.path.join(path, "snapshots"))


def hub_cache_models(path: str) -> list[str] | None:
    """The models of a Hugging Face hub cache folder (`~/.cache/huggingface/hub`, or one `models--ORG--NAME`
    repository in it): each repository's current snapshot (`refs/main`, else the newest), as a model folder
    or the model files in it. None when `path` is not such a folder. So "audit every model I have" is
    `irtools audit ~/.cache/huggingface/hub -o audit/`; nothing is downloaded."""
    if _is_hub_repo(path):
        repos = [path]
    else:
        try:
            repos = sorted(os.path.join(path, n) for n in os.listdir(path) if n.startswith("models--"))
        except OSError:
            return None
        repos = [r for r in repos if _is_hub_repo(r)]
        if not repos:
            return None
    out = []
    for repo in repos:
        snap = _snapshot(repo)
        if snap is None:
            continue
        if is_model_dir(snap):
            out.append(snap)
        else:
            try:
                out += _folder_models(snap)
            except IrtoolsError:  # a repository holding no model (a tokenizer, a dataset card): nothing to audit
                continue
    return out


def _expand_one(arg: str, seen_lists: tuple[str, ...] = ()) -> list[str]:
    if os.path.isdir(arg):
        hub = hub_cache_models(arg)
        if hub is not None:
            if not hub:
                raise IrtoolsError("Hugging Face cache holds no model (no snapshot with model files)", arg)
            return hub
        return [arg] if is_model_dir(arg) else _folder_models(arg)
    if os.path.isfile(arg):
        return _read_list(arg, seen_lists) if arg.lower().endswith(LIST_SUFFIXES) else [arg]
    if _GLOB_CHARS.search(arg):
        matches = sorted(_glob(arg))
        if not matches:
            raise IrtoolsError("glob matches nothing", arg)
        return [p for m in matches for p in ([m] if os.path.isfile(m) or is_model_dir(m) else _expand_one(m))]
    raise IrtoolsError("no such file or directory", arg)


def expand_sources(args: Iterable[str]) -> list[str]:
    """Every model the arguments name, in order, each once (the same file named twice counts once)."""
    out, seen = [], set()
    for arg in args:
        for path in _expand_one(os.fspath(arg)):
            key = os.path.realpath(path)
            if key not in seen:
                seen.add(key)
                out.append(path)
    if not out:
        raise IrtoolsError("no model to audit")
    return out


# -- training-run series ------------------------------------------------------------------
#: Words that announce the training position in a checkpoint's name, strongest first.
_STEP_WORDS = ("global_step", "step", "steps", "iteration", "iter", "it", "checkpoint", "ckpt", "epoch", "ep")
_NUMBER = r"(\d+(?:\.\d+)?)"
_WORD_NUMBER = re.compile(r"(?<![a-z])(" + "|".join(_STEP_WORDS) + r")[-_=.]?" + _NUMBER + r"(?![\d])", re.I)
_ANY_NUMBER = re.compile(_NUMBER)


def series_step(path: str) -> float:
    """The step (or epoch) a checkpoint's path names: `checkpoint-500/`, `step_1200.safetensors`,
    `epoch=3-step=1200.ckpt` (the step), `model_ep10.onnx`; failing a keyword, the last number in
    the last path component that has one."""
    parts = [p for p in re.split(r"[\\/]+", os.path.normpath(path)) if p]
    stems = [re.sub(r"\.(onnx|keras|h5|hdf5|pt2|pt|pth|bin|ckpt|npz|safetensors|weights)$", "", p, flags=re.I)
             for p in parts]
    for stem in reversed(stems):
        found = {m.group(1).lower(): float(m.group(2)) for m in _WORD_NUMBER.finditer(stem)}
        for word in _STEP_WORDS:
            if word in found:
                return found[word]
    for stem in reversed(stems):
        numbers = _ANY_NUMBER.findall(stem)
        if numbers:
            return float(numbers[-1])
    raise IrtoolsError("--series: no step or epoch number in the name", path)


def series_order(paths: Sequence[str]) -> list[Source]:
    """The sources sorted by their step number (ties keep the given order)."""
    steps = [series_step(p) for p in paths]
    order = sorted(range(len(paths)), key=lambda i: steps[i])
    return [Source(paths[i], steps[i]) for i in order]
