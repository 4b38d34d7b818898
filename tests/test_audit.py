"""`irtools audit` on a real Dask cluster (2 worker processes on 127.0.0.1): every model once, the same
numbers as `irtools.analyze` on each model alone, broken models as failed rows, a killed worker, a
second run that does no work, an external scheduler and workers started as processes, the embedded
cluster through the command line, the limits of one model, and the audit folder's report."""

from __future__ import annotations

import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import onnx
import pandas as pd
import pyarrow.dataset as pads
import pytest
from click.testing import CliRunner
from onnx import helper as h

import irtools
from irtools.audit.results import AuditOptions, read_row
from irtools.audit.runner import LOOPBACK_HTTP, run_audit
from irtools.audit.task import audit_model
from irtools.cli import main
from tests import builders as b

distributed = pytest.importorskip("distributed")

#: Columns that depend on the run (times, worker), not on the model.
RUN_COLUMNS = ("seconds", "wall_seconds", "peak_rss_bytes", "worker", "finished")


# -- the zoo ---------------------------------------------------------------------------------
def mlp_proto(seed: int, widths: list[int]) -> onnx.ModelProto:
    """x -> (MatMul W_i -> Relu)* with heavy-tailed random weights (Student t, 3 degrees of freedom)."""
    rng = np.random.default_rng(seed)
    nodes, inits, x = [], [], "x"
    for i, (a, c) in enumerate(zip(widths, widths[1:], strict=False)):
        inits.append(b.tensor(f"fc{i}.weight", rng.standard_t(3, size=(a, c)).astype(np.float32)))
        nodes += [h.make_node("MatMul", [x, f"fc{i}.weight"], [f"m{i}"], name=f"fc{i}"),
                  h.make_node("Relu", [f"m{i}"], [f"r{i}"])]
        x = f"r{i}"
    return b.model(nodes, [b.vinfo("x", [1, widths[0]])], [b.vinfo(x, [1, widths[-1]])], inits)


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    """Ten models: six ONNX checkpoints of a "run" (step_*), an .npz, a Hugging Face-style folder
    of safetensors, and two broken files. Returns (folder, {path: independent parameter count})."""
    from safetensors.numpy import save_file

    root = tmp_path_factory.mktemp("zoo")
    counts = {}
    for k, step in enumerate((20, 100, 300, 1000, 2000, 5000)):
        proto = mlp_proto(k, [32, 20 + 2 * k, 16])
        path = str(root / f"step_{step}.onnx")
        onnx.save(proto, path)
        counts[path] = sum(int(np.prod(t.dims)) for t in proto.graph.initializer)
    rng = np.random.default_rng(7)
    npz = {"enc.weight": rng.normal(size=(40, 24)), "dec.weight": rng.normal(size=(24, 40)), "dec.bias": np.ones(24)}
    np.savez(root / "weights_step_50.npz", **npz)
    counts[str(root / "weights_step_50.npz")] = 40 * 24 * 2  # matrices; 1-D tensors are no layer
    hf = root / "hf_step_70"
    hf.mkdir()
    save_file({"model.layers.0.mlp.weight": rng.normal(size=(48, 16)).astype(np.float32),
               "model.layers.1.mlp.weight": rng.normal(size=(16, 48)).astype(np.float32)},
              str(hf / "model.safetensors"))
    (hf / "config.json").write_text("{}")
    counts[str(hf)] = 48 * 16 * 2
    (root / "broken_step_60.onnx").write_bytes(b"\x08\x07this is not a protobuf model")
    (root / "broken_step_80.safetensors").write_bytes(b"\xff" * 8 + b"{}")
    (root / "README.md").write_text("not a model: the folder expansion leaves it out")
    return str(root), counts


@pytest.fixture(scope="module")
def cluster():
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                  silence_logs=40, **LOOPBACK_HTTP) as lc, distributed.Client(lc) as client:
        yield client


@pytest.fixture(scope="module")
def first_run(zoo, cluster, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("audit"))
    return out, run_audit([zoo[0]], out, series=True, client=cluster, quiet=True)


def same(a, b) -> bool:
    if a is None or (isinstance(a, float) and math.isnan(a)):
        return b is None or (isinstance(b, float) and math.isnan(b))
    if isinstance(a, float):
        return isinstance(b, (int, float)) and math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-300)
    return a == b


# -- a real cluster ----------------------------------------------------------------------------
def test_audit_equals_analyze_alone_and_broken_models_are_failed_rows(zoo, first_run):
    folder, counts = zoo
    out, result = first_run
    summary = pd.read_parquet(os.path.join(out, "summary.parquet"))
    layers = pads.dataset(os.path.join(out, "layers.parquet")).to_table().to_pandas()  # pyarrow reads it too
    assert len(summary) == 10 and summary["source"].is_unique
    # --series: ordered by the step in the names, numerically (not step_100 before step_20)
    assert list(summary["step"]) == [20, 50, 60, 70, 80, 100, 300, 1000, 2000, 5000]
    failed = summary[summary["status"] == "failed"]
    broken = ["broken_step_60.onnx", "broken_step_80.safetensors"]
    assert sorted(os.path.basename(s) for s in failed["source"]) == broken
    assert all(isinstance(e, str) and e and "\n" not in e for e in failed["error"])
    assert result.failed == 2 and result.analysed == 10
    for source, count in counts.items():
        row = summary[summary["source"] == source].iloc[0]
        alone = irtools.analyze(source)
        assert row["status"] == "ok" and row["num_params"] == count
        for key in ("alpha", "alpha_weighted", "log_norm", "log_spectral_norm", "stable_rank"):
            assert same(alone.summary[key], row[key]), key
        for key in ("performance_surprisal", "total_surprisal", "entropy"):
            assert same((alone.reuse or {}).get(key), None if pd.isna(row[key]) else row[key]), key
        mine = layers[layers["model"] == source].to_dict(orient="records")
        assert len(mine) == len(alone.layers) > 0
        for got, want in zip(mine, alone.layers, strict=True):
            for column in alone.columns:
                assert same(want[column], None if got[column] is pd.NA else got[column]), (source, column)


def test_second_run_does_no_work(zoo, cluster, first_run, tmp_path):
    out, _ = first_run
    models = os.path.join(out, "models")
    before = {f: os.stat(os.path.join(models, f)).st_mtime_ns for f in os.listdir(models)}
    again = run_audit([zoo[0]], out, series=True, client=cluster, quiet=True)
    assert again.analysed == 0 and again.resumed == 10
    assert {f: os.stat(os.path.join(models, f)).st_mtime_ns for f in os.listdir(models)} == before
    # other options are another result; a changed model is analysed again
    one, out2 = str(tmp_path / "step_20.onnx"), str(tmp_path / "audit")
    shutil.copy(os.path.join(zoo[0], "step_20.onnx"), one)
    assert run_audit([one], out2, client=cluster, quiet=True).analysed == 1
    assert run_audit([one], out2, client=cluster, quiet=True).analysed == 0
    assert run_audit([one], out2, AuditOptions(metrics="spectral"), client=cluster, quiet=True).analysed == 1
    os.utime(one, ns=(time.time_ns() + 10**9, time.time_ns() + 10**9))
    assert run_audit([one], out2, client=cluster, quiet=True).analysed == 1
    assert len(os.listdir(os.path.join(out2, "models"))) == 2  # one file per (model, options): replaced, not added


def test_killing_a_worker_loses_nothing_and_duplicates_nothing(zoo, cluster, first_run, tmp_path):
    out = str(tmp_path / "audit")
    killed = []

    def kill_a_busy_worker(row):
        if killed:
            return
        busy = [w for w, keys in cluster.processing().items() if keys]
        assert busy, "no task in flight to interrupt"
        pid = cluster.run(os.getpid, workers=busy[:1])[busy[0]]
        os.kill(pid, signal.SIGKILL)
        killed.append(pid)

    result = run_audit([zoo[0]], out, series=True, client=cluster, quiet=True, on_result=kill_a_busy_worker)
    assert killed and len(result.summary) == 10 and result.summary["source"].is_unique
    assert sorted(os.listdir(os.path.join(out, "models"))) == sorted(first_run[1].summary["result"])
    first = pd.read_parquet(os.path.join(first_run[0], "layers.parquet"))
    again = pd.read_parquet(os.path.join(out, "layers.parquet"))
    pd.testing.assert_frame_equal(first, again)
    keep = [c for c in result.summary.columns if c not in RUN_COLUMNS]
    pd.testing.assert_frame_equal(first_run[1].summary[keep], result.summary[keep])


def _wait_for(path: str, seconds: float = 60) -> None:
    end = time.monotonic() + seconds
    while not os.path.exists(path):
        if time.monotonic() > end:
            raise TimeoutError(path)
        time.sleep(0.1)


def test_external_scheduler_and_workers_as_processes(zoo, tmp_path):
    folder, counts = zoo
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    sched_file = str(tmp_path / "scheduler.json")
    cli = os.path.join(os.path.dirname(sys.executable), "dask")
    quiet = dict(env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    procs = [subprocess.Popen([cli, "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                               "--dashboard-address", "127.0.0.1:0", "--scheduler-file", sched_file], **quiet)]
    try:
        _wait_for(sched_file)
        time.sleep(0.2)
        import json

        address = json.load(open(sched_file))["address"]
        assert address.startswith("tcp://127.0.0.1:")
        for _ in range(2):
            procs.append(subprocess.Popen([cli, "worker", address, "--host", "127.0.0.1", "--nthreads", "1",
                                           "--no-dashboard", "--dashboard-address", "127.0.0.1:0"], **quiet))
        listing = tmp_path / "models.txt"
        good = [p for p in counts if "step_" in os.path.basename(p)][:3]
        listing.write_text("# three checkpoints and a broken one\n" + "\n".join(good) + "\n"
                           + os.path.join(folder, "broken_step_60.onnx") + "\n\n")
        out = str(tmp_path / "audit")
        irtools_cli = [sys.executable, "-m", "irtools"]
        res = subprocess.run(irtools_cli + ["audit", str(listing), "-o", out, "--scheduler", address, "-q"],
                             env=env, capture_output=True, text=True, timeout=120)
        assert res.returncode == 3, res.stderr
        summary = pd.read_parquet(os.path.join(out, "summary.parquet"))
        assert list(summary["source"]) == good + [os.path.join(folder, "broken_step_60.onnx")]
        assert list(summary["status"]) == ["ok"] * 3 + ["failed"]
        assert all(w.startswith("tcp://127.0.0.1:") for w in summary["worker"])
        # only good models: exit 0 (the failure is not one of this run's models); csv tables; a scheduler
        # file for the address; nothing analysed again; the tables still hold every result in the folder
        res = CliRunner().invoke(main, ["audit", *good, "-o", out, "--scheduler", sched_file, "--format", "csv"],
                                 catch_exceptions=False)
        assert res.exit_code == 0, res.output
        assert "0 analysed in this run" in res.output
        csv = pd.read_csv(os.path.join(out, "summary.csv"))
        assert list(csv["source"]) == good + [os.path.join(folder, "broken_step_60.onnx")]
        assert list(csv["status"]) == ["ok"] * 3 + ["failed"]
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def test_embedded_cluster_through_the_command_line(zoo, tmp_path):
    folder, counts = zoo
    out = str(tmp_path / "audit")
    one = [p for p in counts if p.endswith(".onnx")][:2]
    res = CliRunner().invoke(main, ["audit", *one, "-o", out, "--workers", "1", "-q"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    summary = pd.read_parquet(os.path.join(out, "summary.parquet"))
    assert list(summary["source"]) == one and (summary["status"] == "ok").all()
    assert all(w.startswith("tcp://127.0.0.1:") for w in summary["worker"])


# -- the command line's usage errors ---------------------------------------------------------------
def test_usage_errors_exit_2(zoo, tmp_path, monkeypatch):
    folder, _ = zoo
    runner = CliRunner()
    res = runner.invoke(main, ["audit", folder, "-o", str(tmp_path / "o"), "--scheduler", "tcp://127.0.0.1:1",
                               "--workers", "2"])
    assert res.exit_code == 2 and "--workers" in res.output
    res = runner.invoke(main, ["audit", str(tmp_path / "missing.onnx"), "-o", str(tmp_path / "o")])
    assert res.exit_code == 2 and "no such file" in res.output
    res = runner.invoke(main, ["audit", str(tmp_path / "nothing*.onnx"), "-o", str(tmp_path / "o")])
    assert res.exit_code == 2 and "glob matches nothing" in res.output
    res = runner.invoke(main, ["audit", folder, "-o", str(tmp_path / "o"), "--scheduler", "tcp://127.0.0.1:1"])
    assert res.exit_code == 2 and "cannot reach the Dask scheduler" in res.output
    monkeypatch.setitem(sys.modules, "distributed", None)  # as if dask were not installed
    res = runner.invoke(main, ["audit", folder, "-o", str(tmp_path / "o")])
    assert res.exit_code == 2 and "pip install irtools[dask]" in res.output
    assert len(res.output.strip().splitlines()) == 1


# -- one model's limits (the task alone, no scheduler) -----------------------------------------
def test_timeout_and_memory_limit_are_failed_rows_and_the_next_model_runs(zoo, tmp_path):
    folder, counts = zoo
    code = tmp_path / "builders.py"  # `file.py:callable` sources: one never returns, one takes 400 MiB
    code.write_text("import time\n"
                    "def hangs():\n    time.sleep(600)\n"
                    "def hogs():\n    block = b'x' * (400 << 20)\n    time.sleep(600)\n    return block\n")
    options = AuditOptions().to_dict()
    start = time.monotonic()
    row = read_row(audit_model(f"{code}:hangs", options, timeout=1.0))
    assert row["status"] == "failed" and row["error"] == "timed out after 1 s (--timeout)"
    row = read_row(audit_model(f"{code}:hogs", options, memory_limit=300 << 20))
    assert row["status"] == "failed" and row["error"].startswith("exceeded the memory limit of 300.0 MiB")
    assert row["peak_rss_bytes"] > 300 << 20
    assert time.monotonic() - start < 60  # both were stopped, not waited for
    good = next(iter(counts))  # the thread's next model gets a fresh analysis process
    row = read_row(audit_model(good, options))
    assert row["status"] == "ok" and row["num_params"] == counts[good]


# -- the audit folder's page ---------------------------------------------------------------------
def kendall_by_hand(x, y) -> float:
    """tau-a over all pairs (the test data have no ties, where it equals tau-b)."""
    n, s = len(x), 0
    for i in range(n):
        for j in range(i + 1, n):
            s += np.sign(x[i] - x[j]) * np.sign(y[i] - y[j])
    return s / (n * (n - 1) / 2)


def test_report_of_an_audit_folder(first_run, tmp_path):
    out, result = first_run
    ok = result.summary[result.summary["status"] == "ok"]
    accuracy = {os.path.basename(s): 50.0 + 3 * k + (k % 3) for k, s in enumerate(ok["source"])}
    page = str(tmp_path / "series.html")
    args = ["report", out, "-o", page] + [f"--accuracy={k}={v}" for k, v in accuracy.items()]
    res = CliRunner().invoke(main, args, catch_exceptions=False)
    assert res.exit_code == 0, res.output
    html = open(page).read()
    rows = dict(re.findall(r'<tr data-metric="([^"]+)">(.*?)</tr>', html))
    x = ok["step"].to_numpy(float)
    acc = np.array([accuracy[os.path.basename(s)] for s in ok["source"]])
    for metric in ("alpha", "log_norm", "stable_rank"):
        y = ok[metric].to_numpy(float)
        cells = re.findall(r"<td>([^<]*)</td>", rows[metric])
        assert float(cells[1]) == pytest.approx(kendall_by_hand(x, y), abs=5e-4)  # vs the step
        assert float(cells[3]) == pytest.approx(kendall_by_hand(acc, y), abs=5e-4)  # vs accuracy
    assert 'id="alpha-by-type"' in html and html.count("<img") == 3
    assert "broken_step_60.onnx" in html  # failed rows are listed with their reason
    res = CliRunner().invoke(main, ["report", out, "-o", page, "--accuracy", "nosuch.onnx=1"])
    assert res.exit_code == 2 and "names no audited model" in res.output


# -- a big model split into one task per tensor ------------------------------------------------------
def test_a_big_model_split_per_tensor_equals_its_one_task_result(zoo, cluster, tmp_path):
    """Over the threshold (forced small here), a sharded safetensors folder and an ONNX file with external
    data are analysed one task per weight matrix on the audit's cluster: their result files hold the same
    rows as the one-task audit (and `irtools.analyze`); a small model beside them is still one task; the
    kept partial rows are gone once the result is written, and a second run does no work."""
    from tests.test_distributed import external_data_onnx, sharded_checkpoint

    (tmp_path / "shards").mkdir()
    (tmp_path / "onnx").mkdir()
    sources = [sharded_checkpoint(tmp_path / "shards"), external_data_onnx(tmp_path / "onnx"),
               os.path.join(zoo[0], "step_20.onnx")]
    from irtools.audit.runner import source_bytes

    assert source_bytes(sources[0]) > 100_000 and source_bytes(sources[1]) > 100_000 > source_bytes(sources[2])
    split, one = str(tmp_path / "split"), str(tmp_path / "one")
    a = run_audit(sources, split, client=cluster, quiet=True, split_over=100_000)
    b_ = run_audit(sources, one, client=cluster, quiet=True, split_over=0)
    assert list(a.summary["worker"].str.startswith("split: ")) == [True, True, False]
    assert list(a.summary["worker"])[:2] == ["split: 6 tasks", "split: 3 tasks"]
    assert not b_.summary["worker"].str.startswith("split").any()
    keep = [c for c in a.summary.columns if c not in RUN_COLUMNS]
    pd.testing.assert_frame_equal(a.summary[keep], b_.summary[keep])
    assert list(a.summary["status"]) == ["ok"] * 3 and list(a.summary["families"])[1] == "spectral,reuse"
    pd.testing.assert_frame_equal(a.layers, b_.layers)
    alone = irtools.analyze(sources[1])
    mine = a.layers[a.layers["model"] == sources[1]].to_dict(orient="records")
    assert [r["name"] for r in mine] == [r["name"] for r in alone.layers]
    for got, want in zip(mine, alone.layers, strict=True):
        assert all(same(want[c], None if got[c] is pd.NA else got[c]) for c in alone.columns)
    assert same(alone.reuse["total_surprisal"], a.summary["total_surprisal"].iloc[1])
    partial = os.path.join(split, "models", ".partial")
    assert not os.path.isdir(partial) or os.listdir(partial) == []
    again = run_audit(sources, split, client=cluster, quiet=True, split_over=100_000)
    assert again.analysed == 0 and again.resumed == 3


def test_split_over_from_the_command_line(cluster, tmp_path):
    """`audit --split-over SIZE` reaches the runner (the sharded folder split, its rows those of `--split-over 0`),
    and a value that is not a size is one line naming the option, before any work."""
    from tests.test_distributed import sharded_checkpoint

    (tmp_path / "shards").mkdir()
    source = sharded_checkpoint(tmp_path / "shards")
    address = cluster.scheduler.address
    runs = {}
    for size in ("100K", "0"):
        out = str(tmp_path / f"out{size}")
        res = CliRunner().invoke(main, ["audit", source, "-o", out, "--scheduler", address, "-q", "--split-over", size],
                                 catch_exceptions=False)
        assert res.exit_code == 0, res.output
        runs[size] = (pd.read_parquet(os.path.join(out, "summary.parquet")),
                      pd.read_parquet(os.path.join(out, "layers.parquet")))
    workers = {size: summary["worker"].iloc[0] for size, (summary, _) in runs.items()}
    assert workers["100K"].startswith("split: ") and not workers["0"].startswith("split")
    pd.testing.assert_frame_equal(runs["100K"][1], runs["0"][1])
    bad = CliRunner().invoke(main, ["audit", source, "-o", str(tmp_path / "bad"), "--split-over", "lots"])
    assert bad.exit_code == 2 and "--split-over: not a size: 'lots'" in bad.output and not (tmp_path / "bad").exists()


@pytest.mark.parametrize("debug", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_failing_tasks_and_a_dying_worker_leave_stderr_to_irtools(zoo, tmp_path, capfd, monkeypatch, debug):
    """Through the command line on the embedded cluster: a model whose task raises, a split model one of
    whose tensor tasks raises, and a worker killed while it runs a tensor task. Without --debug stderr
    holds nothing of Dask (no Compute Failed, no nanny restart, no traceback): only irtools' own lines
    (none with -q); with --debug (the same run, slow: the proof that the quiet one hides real lines)
    Dask's log lines are shown."""
    from irtools.audit import runner
    from tests.test_distributed import sharded_checkpoint

    marker = tmp_path / "killed-once"

    def breaking_plugin():
        class Break(distributed.WorkerPlugin):
            def setup(self, worker):
                import signal

                import irtools.audit.task as task
                import irtools.distributed as dist

                real_model, real_layer = task.audit_model, dist._layer_row

                def audit_model(source, *args, **kwargs):
                    if source.endswith("step_20.onnx"):
                        raise RuntimeError("boom in a model task")
                    return real_model(source, *args, **kwargs)

                def layer_row(layer, options):
                    if layer.name == "l1.q":
                        raise RuntimeError("boom in a tensor task")
                    if not os.path.exists(marker):  # the first tensor task (the largest, l0.up) kills its worker
                        open(marker, "w").close()
                        os.kill(os.getpid(), signal.SIGKILL)  # the worker dies holding the task
                    return real_layer(layer, options)

                task.audit_model, dist._layer_row = audit_model, layer_row

        return Break()

    enter = runner._Cluster.__enter__

    def entered(self):
        client = enter(self)
        client.register_plugin(breaking_plugin(), name="test-break")
        return client

    monkeypatch.setattr(runner._Cluster, "__enter__", entered)
    monkeypatch.setattr(runner, "SPLIT_OVER", 100_000)
    (tmp_path / "big").mkdir()
    big = sharded_checkpoint(tmp_path / "big")
    sources = [big, os.path.join(zoo[0], "step_20.onnx"), os.path.join(zoo[0], "step_100.onnx")]
    out = str(tmp_path / "audit")
    capfd.readouterr()
    res = CliRunner().invoke(main, ["audit", *sources, "-o", out, "--workers", "2", "-q"]
                             + (["--debug"] if debug else []), catch_exceptions=False)
    err = res.stderr + capfd.readouterr().err
    assert res.exit_code == 3, err
    assert marker.exists()  # a worker did die
    summary = pd.read_parquet(os.path.join(out, "summary.parquet"))
    assert list(summary["status"]) == ["failed", "failed", "ok"]
    assert summary["error"][0] == "layer l1.q: its cluster task failed: RuntimeError: boom in a tensor task"
    assert summary["error"][1] == "task failed: RuntimeError: boom in a model task"
    if not debug:
        assert err.strip() == "", err
    else:
        assert "Compute Failed" in err and "boom in a tensor task" in err, err


def test_progress_of_a_split_model_shows_its_tensors_rate_and_eta(monkeypatch):
    """A split model's tensors on stderr without a terminal: a line at the first row, then at most one per
    TENSOR_EVERY seconds, and at the last; the status line (a terminal's) carries them until the model ends."""
    import io

    from irtools.audit import progress as prog

    clock = [1000.0]
    monkeypatch.setattr(prog.time, "monotonic", lambda: clock[0])
    stream = io.StringIO()
    p = prog.AuditProgress(3, stream=stream)
    p.tensors("big\x1b]52;c;x\x07.safetensors", 1, 10)  # the name is escaped, never raw
    for done in range(2, 10):
        clock[0] += 5.0
        p.tensors("big\x1b]52;c;x\x07.safetensors", done, 10)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2 and "\x1b" not in stream.getvalue()
    assert lines[0].startswith("audit: big\\x1b]52;c;x\\x07.safetensors: 1/10 tensors, ")
    assert lines[1].split(": ", 2)[2] == "7/10 tensors, 0.2/s, ETA 0:15"  # 6 more rows in 30 s; 3 left
    assert "; big" in p.line() and "9/10 tensors" in p.line()
    clock[0] += 5.0
    p.tensors("big\x1b]52;c;x\x07.safetensors", 10, 10)
    assert stream.getvalue().splitlines()[-1].endswith("10/10 tensors, 0.2/s, ETA 0:00")
    p.finished({"source": "big\x1b]52;c;x\x07.safetensors", "status": "ok"}, 0)
    assert "tensors" not in p.line()


def test_an_interrupted_split_model_computes_only_its_tensors_without_a_kept_row(cluster, tmp_path, monkeypatch):
    """The rows a split model's earlier run kept (under models/.partial/) are taken as they are: the audit
    submits only the tensors without one (the kept ones are never written again), and its result has every
    row, equal to `irtools.analyze`."""
    from irtools import distributed as dist
    from irtools.audit import runner
    from tests.test_distributed import sharded_checkpoint

    (tmp_path / "big").mkdir()
    big = sharded_checkpoint(tmp_path / "big")
    out = str(tmp_path / "audit")
    models, _ = runner.plan([big], out, AuditOptions())
    partial = runner._partial_dir(models[0])
    spectral = {k: v for k, v in AuditOptions().spectral_options().items() if k not in ("backend", "randomize")}
    dist.spectral_on_cluster(big, cluster, resume=partial, **spectral)  # what the interrupted run kept...
    files = sorted(os.listdir(partial))
    assert len(files) == 6
    for name in (files[0], files[3]):  # ...but for two rows
        os.remove(os.path.join(partial, name))
    written = []
    keep = dist._keep_row
    monkeypatch.setattr(dist, "_keep_row", lambda folder, digest, k, *rest: (written.append(k),
                                                                             keep(folder, digest, k, *rest)))
    result = run_audit([big], out, client=cluster, quiet=True, split_over=100_000)
    assert sorted(written) == [0, 3]
    assert result.summary["status"][0] == "ok" and result.summary["worker"][0] == "split: 6 tasks"
    alone = irtools.analyze(big)
    mine = result.layers.to_dict(orient="records")
    assert [r["name"] for r in mine] == [r["name"] for r in alone.layers]
    for got, want in zip(mine, alone.layers, strict=True):
        assert all(same(want[c], None if got[c] is pd.NA else got[c]) for c in alone.columns)
    assert not os.path.exists(partial)


def _profiler_enabled() -> bool:
    import dask

    return bool(dask.config.get("distributed.worker.profile.enabled"))


def test_the_embedded_cluster_runs_its_workers_without_dasks_profiler():
    """The embedded cluster's workers have Dask's statistical profiler off (it samples every thread's stack
    each 10 ms for a dashboard nobody serves), and starting that cluster leaves this process's own Dask
    configuration as it was."""
    from irtools.audit import runner

    before = _profiler_enabled()
    with runner._Cluster(None, 1, None, quiet=True) as client:
        assert list(client.run(_profiler_enabled).values()) == [False]
        assert _profiler_enabled() == before
    assert _profiler_enabled() == before
