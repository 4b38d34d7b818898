"""`irtools audit`: many models (a model zoo, every checkpoint of a training run) on Dask distributed.

`sources` expands what the user names into models (and orders a training run's checkpoints),
`task` analyses one model in a child process under time and memory limits (scheduler-agnostic),
`results` writes and reads the per-model Parquet files and the summary and layers tables,
`runner` drives Dask (an embedded LocalCluster or any cluster) and resumes, `progress` shows it.
Dask and pyarrow are the `irtools[dask]` extra, imported only here.
"""

from __future__ import annotations

import importlib

_EXPORTS = {"run_audit": "irtools.audit.runner", "AuditResult": "irtools.audit.runner",
            "AuditOptions": "irtools.audit.results", "audit_model": "irtools.audit.task",
            "expand_sources": "irtools.audit.sources", "series_order": "irtools.audit.sources"}


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'irtools.audit' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


__all__ = sorted(_EXPORTS)
