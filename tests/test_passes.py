"""Passes as a library: registry, runner, user-written passes and plugins, the README example."""

import re
import sys
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

import irtools
from irtools.cli import main
from tests import builders as b

README = Path(__file__).resolve().parent.parent / "README.md"


def test_summary_pass_result_is_stored_on_the_model():
    m = irtools.load(b.mlp())
    results = irtools.run_passes(m, ["summary"])
    assert m.results["summary"] is results["summary"]
    assert results["summary"]["parameters"]["scalars"] == 5 * 4 + 5 + 5 * 3 + 3


def test_user_pass_registration_and_requires():
    @irtools.register_pass
    class CountMatMuls(irtools.Pass):
        """Count MatMul and Gemm nodes."""

        name = "test-count-matmuls"
        requires = ("summary",)
        include_gemm: bool = True

        def run(self, model):
            ops = model.results["summary"]["ops"]
            return ops.get("MatMul", 0) + (ops.get("Gemm", 0) if self.include_gemm else 0)

    assert CountMatMuls in irtools.list_passes()
    m = irtools.load(b.mlp())
    assert irtools.run_passes(m, [irtools.get_pass("test-count-matmuls")])["test-count-matmuls"] == 2
    assert "summary" in m.results  # the required pass ran first
    assert irtools.get_pass("test-count-matmuls", include_gemm=False)(m) == 1
    with pytest.raises(irtools.IrtoolsError, match="unknown pass 'nope'"):
        irtools.get_pass("nope")
    with pytest.raises(irtools.IrtoolsError, match="bad options"):
        irtools.get_pass("test-count-matmuls", colour="red")
    with pytest.raises(ValueError, match="already registered"):

        @irtools.register_pass
        class Clash(irtools.Pass):
            name = "summary"


def test_plugin_module_registers_a_pass(tmp_path, monkeypatch):
    (tmp_path / "my_audit_plugin.py").write_text(textwrap.dedent('''
        import irtools

        @irtools.register_pass
        class BiasCount(irtools.Pass):
            """Number of bias tensors."""
            name = "bias-count"

            def run(self, model):
                return sum(p.name.endswith("bias") for p in model.parameters)
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    res = CliRunner().invoke(main, ["--plugin", "my_audit_plugin", "passes"])
    assert res.exit_code == 0
    assert any(line.startswith("bias-count") and "Number of bias tensors." in line for line in res.output.splitlines())
    res = CliRunner().invoke(main, ["--plugin", "no_such_plugin_module", "passes"])
    assert res.exit_code == 2 and "cannot import pass plugin module 'no_such_plugin_module'" in res.output
    sys.modules.pop("my_audit_plugin", None)


def test_readme_library_example_runs(monkeypatch):
    """The README's library example is executed as written (from the repository root)."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "README has no python example"
    monkeypatch.chdir(README.parent)
    for code in blocks:
        exec(compile(code, str(README), "exec"), {"__name__": "readme_example"})


def test_builtin_passes_load_on_demand():
    """A spectral-only run imports neither the counting pass (numba kernels) nor scipy.optimize;
    listing the passes still finds all five built-ins."""
    import subprocess

    code = ("import sys, irtools; irtools.get_pass('weights'); irtools.get_pass('spectral'); "
            "print(sorted(m for m in ('irtools.passes.context_counts', 'irtools.passes.reuse', 'scipy.optimize') if m in sys.modules)); "
            "print(sorted(p.name for p in irtools.list_passes()))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.splitlines()
    assert out[0] == "[]"
    assert out[1] == str(sorted(["summary", "context-counts", "reuse", "weights", "spectral"]))
