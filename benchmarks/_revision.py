"""The benchmarks' one way to run an earlier commit's irtools beside this checkout's (`--baseline REV`)."""

from __future__ import annotations

import os
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def unpack_revision(rev: str, tree: str) -> None:
    """Unpack git revision `rev`'s irtools, passes and frontends into the folder `tree`, laid out as the
    editable install maps them (irtools.passes, irtools.frontends): `PYTHONPATH=tree` imports that irtools."""
    archive = subprocess.run(["git", "-C", ROOT, "archive", rev, "irtools", "passes", "frontends"],
                             capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", tree], input=archive, check=True)
    for pkg in ("passes", "frontends"):
        os.symlink(os.path.join(tree, pkg), os.path.join(tree, "irtools", pkg))
