"""One model over a LocalCluster: the spectral family, one task per weight layer (irtools.distributed)."""

import json
import math
import os

import numpy as np
import pytest

distributed = pytest.importorskip("distributed")

from irtools.distributed import spectral_on_cluster  # noqa: E402
from irtools.errors import IrtoolsError  # noqa: E402
from irtools.frontends import open_source  # noqa: E402
from irtools.passes.spectral import SpectralPass  # noqa: E402
from tests.conftest import EXAMPLE  # noqa: E402

LOOPBACK = {"dashboard_address": None}


def sharded_checkpoint(folder) -> str:
    """Two safetensors shards and an index (the library's own writer), six matrices and a bias."""
    from safetensors.numpy import save_file

    rng = np.random.default_rng(0)
    shards = [{"embed.weight": rng.standard_normal((300, 48)).astype(np.float32),
               "l0.q.weight": rng.standard_normal((48, 48)).astype(np.float32),
               "l0.up.weight": rng.standard_t(3, (160, 48)).astype(np.float32)},
              {"l1.q.weight": rng.standard_normal((48, 48)).astype(np.float32),
               "l1.up.weight": rng.standard_t(4, (160, 48)).astype(np.float32),
               "l1.conv.weight": rng.standard_normal((32, 16, 3, 3)).astype(np.float32),
               "l1.up.bias": np.zeros(160, np.float32), "tiny.weight": np.ones((4, 3), np.float32)}]
    weight_map = {}
    for k, tensors in enumerate(shards):
        name = f"model-{k + 1:05d}-of-00002.safetensors"
        save_file(tensors, os.path.join(folder, name))
        weight_map.update(dict.fromkeys(tensors, name))
    with open(os.path.join(folder, "model.safetensors.index.json"), "w") as fh:
        json.dump({"metadata": {}, "weight_map": weight_map}, fh)
    return str(folder)


def same(a, b) -> bool:
    if isinstance(a, float) and math.isnan(a):
        return isinstance(b, float) and math.isnan(b)
    if isinstance(a, float):
        return math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-300)
    return a == b


def test_layers_over_a_local_cluster_equal_the_single_process_rows(tmp_path):
    path = sharded_checkpoint(tmp_path)
    opened = open_source(path)
    single = SpectralPass().analyse(opened.layers, opened.skipped)
    seen = []
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                  silence_logs=40, **LOOPBACK) as cluster:
        result = spectral_on_cluster(path, cluster.scheduler_address, progress=lambda d, t, n: seen.append((d, t)))
        with distributed.Client(cluster) as client:
            workers = client.run(os.getpid)
    assert len(set(workers.values())) == 2
    assert [r["name"] for r in result.rows] == [r["name"] for r in single.rows]  # the model's own order
    assert len(result.rows) == 6 and seen[-1] == (6, 6)
    assert result.columns() == single.columns()
    for a, b in zip(single.rows, result.rows, strict=True):
        for key in single.columns():
            assert same(a.get(key), b.get(key)), (a["name"], key, a.get(key), b.get(key))
    assert result.skipped == single.skipped and any("tiny" in s["name"] for s in result.skipped)
    for key, value in single.summary.items():
        assert same(value, result.summary[key]) if not isinstance(value, dict) else value == result.summary[key]


def test_graph_sources_and_row_only_options_are_refused():
    with pytest.raises(IrtoolsError, match="weights-only"):
        spectral_on_cluster(EXAMPLE, "tcp://127.0.0.1:1")
    with pytest.raises(IrtoolsError, match="keep_evals"):
        spectral_on_cluster(EXAMPLE, "tcp://127.0.0.1:1", keep_evals=True)


def test_analyze_with_a_scheduler_on_the_command_line_equals_the_plain_run(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from irtools import cli
    from irtools.cli import main

    monkeypatch.setattr(cli._progress, "EVERY", 0.0)  # a progress line per tensor, as a long run prints them

    path = sharded_checkpoint(tmp_path)
    plain = CliRunner().invoke(main, ["analyze", path, "--metrics", "spectral", "--format", "json"])
    assert plain.exit_code == 0, plain.output
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                  silence_logs=40, **LOOPBACK) as cluster:
        split = CliRunner().invoke(main, ["analyze", path, "--metrics", "spectral", "--format", "json",
                                          "--scheduler", cluster.scheduler_address])
    assert split.exit_code == 0, split.output
    lines = [line for line in split.stderr.splitlines() if line.startswith("spectral: ")]
    assert [line.split()[1] for line in lines] == [f"{k}/6" for k in range(1, 7)], split.stderr
    assert all(" tensors, " in line and " tensors/s, ETA " in line for line in lines)
    assert lines[-1].endswith("ETA 0:00:00")
    a, b = json.loads(plain.stdout), json.loads(split.stdout)
    assert [r["name"] for r in a["layers"]] == [r["name"] for r in b["layers"]]
    for ra, rb in zip(a["layers"], b["layers"], strict=True):
        assert all(same(ra[k], rb[k]) for k in ra), ra["name"]
    assert a["skipped"] == b["skipped"]
    refused = CliRunner().invoke(main, ["analyze", EXAMPLE, "--scheduler", "tcp://127.0.0.1:1"])
    assert refused.exit_code == 2 and "weights-only" in refused.output


def test_a_worker_killed_mid_run_loses_and_duplicates_nothing(tmp_path):
    """SIGKILL one of two worker processes after the first rows arrive, while it holds a task: its
    tasks run again elsewhere and every layer's row comes back once, in the model's order, equal to
    the single-process rows."""
    import signal

    from safetensors.numpy import save_file

    rng = np.random.default_rng(1)
    tensors = {f"l{k:02d}.w.weight": rng.standard_t(3 + k % 4, (700, 500)).astype(np.float32) for k in range(14)}
    save_file(tensors, os.path.join(tmp_path, "model.safetensors"))
    path = str(tmp_path / "model.safetensors")
    opened = open_source(path)
    single = SpectralPass(workers=1).analyse(opened.layers, opened.skipped)
    assert len(single.rows) == 14
    seen, killed = [], {}
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                  silence_logs=50, **LOOPBACK) as cluster, distributed.Client(cluster) as client:
        pids = client.run(os.getpid)
        assert len(set(pids.values())) == 2

        def progress(done, total, name):
            seen.append((done, total, name))
            if not killed:
                busy = {w: keys for w, keys in client.processing().items() if keys and w in pids}
                assert busy, "no worker holds a task after the first row: make the tasks longer"
                victim = sorted(busy)[0]
                killed.update(worker=victim, keys=list(busy[victim]), done=done)
                os.kill(pids[victim], signal.SIGKILL)

        costs = []
        result = spectral_on_cluster(path, client=client, progress=progress, costs=costs)
        after = client.run(os.getpid)
    assert killed["keys"] and killed["done"] < 14  # the killed worker held a task that had not come back
    assert killed["worker"] not in after and pids[killed["worker"]] not in after.values()
    assert [d for d, _, _ in seen] == list(range(1, 15)) and {t for _, t, _ in seen} == {14}
    assert sorted(n for _, _, n in seen) == [r["name"] for r in single.rows]  # each row reported once
    assert [r["name"] for r in result.rows] == [r["name"] for r in single.rows]
    assert [r["layer_id"] for r in result.rows] == list(range(14))
    for a, b in zip(single.rows, result.rows, strict=True):
        for key in single.columns():
            assert same(a.get(key), b.get(key)), (a["name"], key, a.get(key), b.get(key))
    assert [c["name"] for c in costs] == [r["name"] for r in single.rows]
    assert all(c["N"] == 700 and c["M"] == 500 and c["cpu_s"] > 0 and c["wall_s"] > 0 for c in costs)
