"""Fuzz of a checkpoint folder's config.json (issue 23, round 4): whatever its fields say (sizes from
-1 to 2^62, wrong types, class names that are functions, tokenizers, dotted paths or control
characters, auto_map of any shape), opening the folder either gives every matrix of the checkpoint a
spectral row, named as the weights-only route names it (the truth), or raises one `IrtoolsError`
line; nothing else escapes, and the work stays bounded (a 10^6-layer config is stopped at the module
cap). Derandomized and bounded like the rest of the fuzz suite."""

from __future__ import annotations

import json
import os
import shutil
import tempfile

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")
tf = pytest.importorskip("transformers")

import irtools  # noqa: E402
from irtools.errors import IrtoolsError  # noqa: E402

EXAMPLES = max(1, int(12 * float(os.environ.get("IRTOOLS_FUZZ_SCALE", "1"))))
SIZES = st.sampled_from([-5, -1, 0, 1, 3, 64, 2**31, 2**40, 2**62, 10**6, 1.5, True, None, "32", [32], {"a": 1}])
NAMES = st.sampled_from(["LlamaForCausalLM", "LlamaModel", "AutoTokenizer", "pipeline", "LlamaConfig", "os.system",
                         "transformers.LlamaForCausalLM", "__class__", "\x1b[2JEvil", "", "logging"])
FIELDS = st.fixed_dictionaries({}, optional={
    "num_hidden_layers": SIZES, "hidden_size": SIZES, "vocab_size": SIZES, "num_attention_heads": SIZES,
    "max_position_embeddings": SIZES, "intermediate_size": SIZES, "num_key_value_heads": SIZES,
    "architectures": st.one_of(st.lists(NAMES, max_size=3), NAMES, st.just([1, None])),
    "model_type": st.sampled_from(["llama", "bert", "nosuch", 5, None, "\x07"]),
    "auto_map": st.sampled_from([{}, {"AutoModel": "m.C"}, {"AutoModel": 5}, ["x"], "a.b", {"AutoModel": ["a.b", None]}]),
})


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fuzz-config") / "llama"
    torch.manual_seed(0)
    tf.LlamaForCausalLM(tf.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=1,
                                       num_attention_heads=4, num_key_value_heads=2,
                                       max_position_embeddings=32)).save_pretrained(folder)
    truth = irtools.analyze(os.path.join(folder, "model.safetensors"), metrics="spectral", min_evals=1)
    return str(folder), sorted(row["name"] for row in truth.layers)


@settings(max_examples=EXAMPLES, deadline=None, derandomize=os.environ.get("IRTOOLS_FUZZ_RANDOM") != "1",
          database=None, suppress_health_check=list(HealthCheck))
@given(fields=FIELDS)
def test_fuzz_config_json(llama, fields):
    source, truth = llama
    with tempfile.TemporaryDirectory(prefix="irtools-fuzz-config-") as root:
        folder = os.path.join(root, "m")
        shutil.copytree(source, folder)
        path = os.path.join(folder, "config.json")
        with open(path) as fh:
            config = json.load(fh)
        config.update(fields)
        with open(path, "w") as fh:
            json.dump({k: v for k, v in config.items() if v is not None}, fh)
        try:
            analysis = irtools.analyze(folder, min_evals=1, trust=True)
        except IrtoolsError as exc:
            assert "\n" not in str(exc) and "unexpected" not in str(exc), str(exc)
            return
        assert sorted(row["name"] for row in analysis.layers) == truth, (fields, analysis.notes)
        assert all("\n" not in n for n in analysis.notes), analysis.notes
