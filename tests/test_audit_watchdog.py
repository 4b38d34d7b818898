"""No hang (issue 23): a task the cluster holds but no worker runs is found by the audit's watchdog and
submitted again; one never run at all ends as a failed job with its reason, so the run always ends.

The lost task is made real: it asks for a worker resource no worker has, so the scheduler keeps it
("no-worker") and no worker ever executes it, which is what the client saw in the hang.
"""

from __future__ import annotations

import time

import pytest

distributed = pytest.importorskip("distributed")

from irtools.audit.runner import LOOPBACK_HTTP, _Stalled, complete  # noqa: E402


@pytest.fixture(scope="module")
def client():
    import logging

    cluster = distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True, host="127.0.0.1",
                                       silence_logs=logging.CRITICAL, **LOOPBACK_HTTP)
    c = distributed.Client(cluster)
    yield c
    c.close()
    cluster.close()


def _square(x):
    return x * x


def test_a_lost_task_is_submitted_again_and_finishes(client):
    submitted = []

    def submit(key, x):
        submitted.append(key)
        lost = key == "job-3"  # the first copy of job 3 is never run by any worker
        return client.submit(_square, x, key=key, pure=False, resources={"never-there": 1} if lost else None)

    results = {}
    start = time.monotonic()
    complete(client, {f"job-{x}": x for x in (2, 3)}, submit,
             lambda job, future, data, left: results.__setitem__(job, data), check_s=0.5)
    assert results == {2: 4, 3: 9}
    assert any(k.startswith("job-3-again") for k in submitted)
    assert time.monotonic() - start < 60


def test_a_task_never_run_ends_as_a_failure_with_its_reason(client):
    def submit(key, x):
        return client.submit(_square, x, key=key, pure=False, resources={"never-there": 1})

    results = {}
    complete(client, {"job-lost": 5}, submit, lambda job, future, data, left: results.__setitem__(job, data),
             check_s=0.3, resubmits=1)
    assert isinstance(results[5], _Stalled) and "without running it" in str(results[5])
