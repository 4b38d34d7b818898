"""One model over a LocalCluster: the spectral family, one task per weight layer (irtools.distributed)."""

import json
import math
import os

import numpy as np
import pytest

distributed = pytest.importorskip("distributed")

from irtools.distributed import analyze_on_cluster, spectral_on_cluster  # noqa: E402
from irtools.errors import IrtoolsError  # noqa: E402
from irtools.frontends import open_source  # noqa: E402
from irtools.passes.spectral import SpectralPass  # noqa: E402
from tests.conftest import EXAMPLE  # noqa: E402

from irtools.audit.runner import LOOPBACK_HTTP as LOOPBACK  # noqa: E402 - HTTP on 127.0.0.1, a free port


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
    import irtools
    from irtools.ir.model import IRModel

    with pytest.raises(IrtoolsError, match="framework graph"):  # an in-memory graph has no file to read from
        spectral_on_cluster(IRModel(irtools.load(EXAMPLE).model), "tcp://127.0.0.1:1")
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
    assert refused.exit_code == 2 and "cannot reach the Dask scheduler" in refused.output


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


def external_data_onnx(folder) -> str:
    """An ONNX file whose initializers are all in one external data file (onnx's own writer): two dense
    layers (MatMul, Gemm with transB), a 3x3 convolution and a bias."""
    import onnx
    from onnx import helper as h

    from tests import builders as b

    rng = np.random.default_rng(3)
    inits = [b.tensor("conv.weight", rng.standard_normal((24, 8, 3, 3)).astype(np.float32)),
             b.tensor("fc1.weight", rng.standard_t(3, (24 * 6 * 6, 64)).astype(np.float32)),
             b.tensor("fc2.weight", rng.standard_t(4, (40, 64)).astype(np.float32)),
             b.tensor("fc2.bias", np.zeros(40, np.float32))]
    nodes = [h.make_node("Conv", ["x", "conv.weight"], ["c"], name="conv"),
             h.make_node("Flatten", ["c"], ["f"], name="flat", axis=1),
             h.make_node("MatMul", ["f", "fc1.weight"], ["m"], name="fc1"),
             h.make_node("Gemm", ["m", "fc2.weight", "fc2.bias"], ["y"], name="fc2", transB=1)]
    proto = b.model(nodes, [b.vinfo("x", [1, 8, 8, 8])], [b.vinfo("y", [1, 40])], inits)
    path = os.path.join(folder, "model.onnx")
    onnx.save_model(proto, path, save_as_external_data=True, all_tensors_to_one_file=True, location="model.data",
                    size_threshold=0)
    return path


def test_onnx_with_external_data_over_a_local_cluster_equals_the_single_process_run(tmp_path):
    """Tasks carry the file's path and the layer's place, not the model: each worker opens the graph and
    maps the layer's initializers by offset from the .data file; the rows equal `irtools.analyze`'s."""
    import pickle

    import cloudpickle

    import irtools
    from irtools.distributed import _layers_of

    path = external_data_onnx(tmp_path)
    assert os.path.getsize(tmp_path / "model.data") > 24 * 36 * 64 * 4 > 50 * os.path.getsize(path)
    single = irtools.analyze(path, metrics="spectral")
    _, layers, _ = _layers_of(path, "torch", None, None)
    assert [lay.name for lay in layers] == [r["name"] for r in single.layers]
    for layer in layers:  # what a task ships: a few hundred bytes, not the tensor nor the graph
        assert len(cloudpickle.dumps(layer)) < 2000
        np.testing.assert_array_equal(pickle.loads(cloudpickle.dumps(layer)).matrices()[0], layer.matrices()[0])
    seen = []
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                  silence_logs=40, **LOOPBACK) as cluster, distributed.Client(cluster) as client:
        result = spectral_on_cluster(path, client, progress=lambda d, t, n: seen.append((d, t)))
        whole = analyze_on_cluster(path, None, cluster.scheduler_address)  # + the reuse family, one more task
    assert [r["name"] for r in result.rows] == [r["name"] for r in single.layers] == ["conv", "fc1", "fc2"]
    full = irtools.analyze(path)
    assert whole.families == full.families == ("spectral", "reuse") and whole.notes == full.notes
    assert whole.reuse == full.reuse and whole.skipped == full.skipped and whole.columns == full.columns
    assert whole.layers == full.layers and whole.summary == full.summary  # BLAS on one thread: bit for bit
    assert seen[-1] == (3, 3)
    for a, b in zip(single.layers, result.rows, strict=True):
        for key in single.columns:
            assert same(a.get(key), b.get(key)), (a["name"], key, a.get(key), b.get(key))
    assert [s["name"] for s in result.skipped] == [s["name"] for s in single.skipped]


def test_per_task_notes_stay_on_the_workers_and_the_client_announces_once(tmp_path, capfd, monkeypatch):
    """Every task's spectral pass would print its own 'irtools: note: spectral: 1 layer(s) ...' estimate:
    with the note's threshold at 0 s on the workers too, the client's stderr has one note, the model's."""
    from irtools import budget

    path = sharded_checkpoint(tmp_path)
    monkeypatch.setattr(budget, "PROGRESS_AFTER_S", 0.0)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                  silence_logs=40, **LOOPBACK) as cluster, distributed.Client(cluster) as client:
        client.run(lambda: setattr(__import__("irtools.budget").budget, "PROGRESS_AFTER_S", 0.0))
        capfd.readouterr()
        result = spectral_on_cluster(path, client)
        err = capfd.readouterr().err
    assert len(result.rows) == 6
    notes = [line for line in err.splitlines() if "note:" in line]
    assert len(notes) == 1, err
    assert notes[0].startswith("irtools: note: spectral: 6 layer(s) on 2 Dask worker thread(s)"), err
    assert "1 layer(s)" not in err


def test_tasks_go_out_largest_first_and_rows_come_back_in_model_order(tmp_path):
    """Longest-processing-time order: with one worker thread, the tasks start in decreasing estimated cost
    (by the worker's clock); the rows are still in the model's order."""
    from safetensors.numpy import save_file

    from irtools.distributed import lpt_order, makespan, task_cost

    rng = np.random.default_rng(5)
    shapes = [(60, 40), (400, 300), (90, 90), (500, 120), (200, 200)]
    save_file({f"l{k}.weight": rng.standard_normal(s).astype(np.float32) for k, s in enumerate(shapes)},
              str(tmp_path / "m.safetensors"))
    path = str(tmp_path / "m.safetensors")
    layers = open_source(path).layers
    order = lpt_order(layers)
    costs = [task_cost(layer) for layer in layers]
    assert [costs[k] for k in order] == sorted(costs, reverse=True) and order[0] == 1
    assert makespan([1, 1, 1, 1, 3], 2) == 5 and makespan([3, 1, 1, 1, 1], 2) == 4  # LPT beats the given order here
    costs = []
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True, host="127.0.0.1",
                                  silence_logs=40, **LOOPBACK) as cluster, distributed.Client(cluster) as client:
        result = spectral_on_cluster(path, client, costs=costs)
    assert sorted(range(5), key=lambda k: costs[k]["started"]) == order  # the worker ran them largest first
    assert [r["name"] for r in result.rows] == [layer.name for layer in layers]
    assert [r["layer_id"] for r in result.rows] == list(range(5))


def test_resume_keeps_each_row_and_an_interrupted_run_computes_only_the_rest(tmp_path):
    """`resume=FOLDER`: each row is kept as it arrives; a second run takes the kept rows (a damaged file is
    computed again, as a missing one is) and submits only the others; the rows are the same. Other options
    or a changed source trust none of them."""
    import time

    (tmp_path / "m").mkdir()
    path = sharded_checkpoint(tmp_path / "m")
    keep = tmp_path / "rows"
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                  silence_logs=40, **LOOPBACK) as cluster, distributed.Client(cluster) as client:
        first = spectral_on_cluster(path, client, resume=str(keep))
        files = sorted(os.listdir(keep))
        assert len(files) == 6 and len({f.split("-")[0] for f in files}) == 1
        os.remove(keep / files[1])
        os.remove(keep / files[4])
        (keep / files[2]).write_text("{not json")
        seen = []
        again = spectral_on_cluster(path, client, resume=str(keep), progress=lambda d, t, n: seen.append(d))
        assert seen == [3, 4, 5, 6]  # the 3 kept rows at once, then the 3 computed
        assert again.rows == first.rows and len(os.listdir(keep)) == 6
        seen.clear()
        spectral_on_cluster(path, client, resume=str(keep), min_evals=5, progress=lambda d, t, n: seen.append(d))
        assert seen == [1, 2, 3, 4, 5, 6]  # other options: nothing kept holds
        shard = os.path.join(path, "model-00002-of-00002.safetensors")
        os.utime(shard, ns=(time.time_ns() + 10**9, time.time_ns() + 10**9))
        seen.clear()
        spectral_on_cluster(path, client, resume=str(keep), progress=lambda d, t, n: seen.append(d))
        assert seen == [1, 2, 3, 4, 5, 6]  # a changed shard: nothing kept holds


def test_a_result_whose_future_no_longer_reads_finished_is_still_its_row(monkeypatch):
    """A worker killed after its task's result came back makes the scheduler recompute the key: the future reads
    lost or pending while the result is already in hand. That result is the row (the status was read as a failed
    task: `layer l05.w: its cluster task failed: lost: finished`, seen once in the killed-worker test)."""
    from irtools import distributed
    from irtools.audit import runner
    from irtools.frontends.formats.common import StoredArray
    from irtools.frontends.formats.layers import weight_layers

    rng = np.random.default_rng(0)
    values = {f"l{k}.weight": rng.standard_normal((24, 16 + k)).astype(np.float32) for k in range(3)}
    layers = weight_layers({n: StoredArray(v.shape, v.dtype, lambda v=v: v) for n, v in values.items()})

    class Moved:  # the future of a task whose key the scheduler is recomputing
        def __init__(self, status):
            self.status = status

    def complete(client, jobs, submit, finished):
        for left, (key, k) in enumerate(jobs.items()):
            finished(k, Moved("lost" if left % 2 else "pending"), distributed._layer_row(layers[k], {}),
                     len(jobs) - left - 1)

    monkeypatch.setattr(runner, "complete", complete)
    rows, _, _ = distributed._run_layers(None, layers, {}, 0, None, None, False, "stamp", announce=False)
    single = SpectralPass(workers=1).analyse(layers).rows
    assert [r["name"] for r in rows] == [r["name"] for r in single]
    assert [r["alpha"] for r in rows] == [r["alpha"] for r in single]


def test_an_audit_task_that_ended_with_no_result_is_a_failed_row(monkeypatch, tmp_path):
    """The audit side of the same race: a task whose future reads lost or pending and whose data is an exception, not
    its result bytes, is a failed row with the reason (it went on to `write_result` as if it were bytes)."""
    from irtools.audit import runner
    from irtools.audit.results import AuditOptions, read_row
    from irtools.audit.sources import Source

    class Ended:
        def __init__(self, status):
            self.status = status

    rows = []

    class Progress:
        def finished(self, row, _running):
            rows.append(row)

    def complete(client, jobs, submit, finished):
        for k, (key, m) in enumerate(jobs.items()):
            error = RuntimeError("the worker went away")
            finished(m, Ended("lost" if k else "pending"), (RuntimeError, error, None) if k else error, 0)

    monkeypatch.setattr(runner, "complete", complete)
    models = [runner._Model(Source(str(tmp_path / f"m{k}.onnx")), str(tmp_path / f"m{k}.parquet"), "f")
              for k in range(2)]
    runner._run(None, models, AuditOptions(), None, None, 0, Progress(), None)
    assert [r["status"] for r in rows] == ["failed", "failed"]
    assert all("the worker went away" in read_row(m.path)["error"] for m in models)
