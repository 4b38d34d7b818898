"""Hostile and broken model files (issue #12): every hand-crafted case of every class ends in
exit 0 with valid output or exit 2 with one specific `irtools: error:` line, reads nothing
outside the model's folder, leaves its inputs unchanged, never hangs, and (run in a subprocess
where it could crash or bloat) stays under 500 MB of peak RSS."""

from __future__ import annotations

import pytest

from tests.fuzz import harness, hostile


@pytest.mark.parametrize("name", sorted(hostile.CASES), ids=lambda n: f"{hostile.CASES[n][0]}-{n}")
def test_hostile_case(tmp_path, name):
    klass, build = hostile.CASES[name]
    lay = hostile.layout(str(tmp_path))
    case = build(lay)
    before = harness.snapshot(lay.model)
    outcome = harness.run_subprocess(case.args) if case.isolate else harness.run_in_process(case.args)
    harness.check(outcome, lay.model, before, expect=case.expect, message=case.message)
    for text in case.absent:
        assert text not in outcome.stdout and text not in outcome.stderr, f"{text!r} printed"
