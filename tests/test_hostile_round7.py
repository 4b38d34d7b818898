"""Hostile files found by this round's randomized fuzzing (IRTOOLS_FUZZ_RANDOM=1): what a file's bytes make
Python itself print. A protocol-0 pickle string with an escape Python does not know (`S'a\\q'`) made both the
opcode scan (pickletools) and the unpickler warn "invalid escape sequence" on stderr, a second line beside
irtools' one-line error (or beside a successful run)."""

from __future__ import annotations

import io
import warnings
import zipfile

import pytest
from click.testing import CliRunner

from irtools.frontends.formats.unpickler import unpickle
from tests.fuzz import formats as f


def test_an_unknown_escape_in_a_pickle_string_is_read_as_pickle_reads_it_without_a_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning fails the test
        assert unpickle(io.BytesIO(b"S'a\\q'\n."), "m.pt") == "a\\q"  # pickle's own reading of the bytes


def test_a_checkpoint_with_such_a_key_prints_only_its_rows(tmp_path):
    """A state-dict key written as a protocol-0 string with an unknown escape, beside a real tensor: the CLI
    analyses it and stderr holds no warning, even with every warning shown."""
    from irtools.cli import main

    state = f.p_state({"w": f.p_tensor("0", 12, 0, (3, 4), (4, 1))})
    assert b"X\x01\x00\x00\x00w" in state  # the key as BINUNICODE, replaced below
    state = state.replace(b"X\x01\x00\x00\x00w", b"S'w\\q'\n", 1)  # the key as STRING, with an unknown escape
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("archive/data.pkl", state)
        z.writestr("archive/data/0", bytes(range(48)))
    path = tmp_path / "m.pt"
    path.write_bytes(buf.getvalue())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = CliRunner().invoke(main, ["analyze", str(path), "--metrics", "spectral"])
    assert result.exit_code == 0, result.output
    assert "w\\q" in result.stdout
    assert not [w for w in caught if issubclass(w.category, (DeprecationWarning, SyntaxWarning))]


@pytest.mark.parametrize("data", [b"\x80\x02S'0\\\xc2\x80'\n."])
def test_an_escape_before_non_ascii_text_is_one_error_without_a_warning(data):
    """(The readers map the UnicodeDecodeError to their one-line error: test below.)"""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(UnicodeDecodeError):
            unpickle(io.BytesIO(data), "m.pt")


def test_a_pattern_key_re_warns_about_is_matched_without_the_warning():
    """`[[a]` is a valid pattern that re's parser warns about ("possible nested set"): the warning is about the
    adapter's key, printed under irtools' own file name; the key is matched as PEFT matches it, silently."""
    import re

    from irtools.frontends.peft_patterns import _Pattern

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        p = _Pattern("m.[[q]", [10**6])
        for name in ("m.q", "x.m.[", "m.[", "m.qq", "x.m.q"):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                want = re.match(r"(.*\.)?(m.[[q])$", name) is not None
            assert p.matches(name) == want, name


def test_text_that_does_not_decode_is_named_by_its_bytes_not_the_codecs_wording():
    """A checkpoint whose key is cut inside a UTF-8 character: one line naming the bytes and where they are (the
    codec's own "unexpected end of data" read like an unexpected error)."""
    from irtools.errors import ModelLoadError
    from irtools.frontends.formats.common import read_errors

    with pytest.raises(ModelLoadError) as err:
        with read_errors("m.pt", "PyTorch checkpoint"):
            b"ab\xc2".decode("utf-8")
    assert str(err.value) == ("m.pt: not a readable PyTorch checkpoint (text that does not decode: not utf-8: bytes c2 "
                              "at position 2 of a string)")


@pytest.mark.parametrize(("field", "value", "said"), [("hidden_size", 0, "config.json describes has"),
                                                      ("hidden_size", 16, "config.json describes has"),
                                                      ("hidden_size", 48, "config.json describes has"),
                                                      ("architectures", [], "reads no parameter from 1 tensor")])
def test_a_config_describing_another_model_than_the_checkpoint_gives_the_checkpoints_rows(tmp_path, field, value,
                                                                                         said):
    """config.json changed (found by the config fuzz): a hidden_size that gives the architecture's parameters
    other shapes than the checkpoint's tensors (before: hidden_size 0 gave no row at all, 16 and 48 rows of the
    architecture's shapes, silently wrong), or no `architectures`, so that the base model is built for a
    checkpoint of the LM-head model (before: lm_head's row was dropped without a word). Every stored matrix gets
    its row from the weights alone, named and shaped as the weights-only route has it, with a note."""
    torch = pytest.importorskip("torch")
    tf = pytest.importorskip("transformers")
    import json
    import os

    import irtools

    folder = tmp_path / "llama"
    torch.manual_seed(0)
    tf.LlamaForCausalLM(tf.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=1,
                                       num_attention_heads=4, num_key_value_heads=2,
                                       max_position_embeddings=32)).save_pretrained(folder)
    truth = irtools.analyze(os.path.join(folder, "model.safetensors"), metrics="spectral", min_evals=1)
    config = json.loads((folder / "config.json").read_text())
    config[field] = value
    (folder / "config.json").write_text(json.dumps(config))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's own note on zero-element tensors
        got = irtools.analyze(str(folder), metrics="spectral", min_evals=1, trust=True)
    key = lambda r: r["name"]  # noqa: E731
    assert [(r["name"], r["N"], r["M"]) for r in sorted(got.layers, key=key)] == \
        [(r["name"], r["N"], r["M"]) for r in sorted(truth.layers, key=key)]
    assert any("spectral metrics from the weights alone" in n and said in n for n in got.notes), got.notes


@pytest.mark.parametrize("same", [True, False])
def test_a_tied_config_over_a_checkpoint_that_stores_both_names(tmp_path, same):
    """config.json ties lm_head to the embedding; the checkpoint stores both names. The same values: a tied model
    saved with both keys, the module route as usual (one row, reuse kept). Different values (found beside the
    config fuzz: tie_word_embeddings set on an untied checkpoint): before, lm_head's row was dropped without a
    word and the graph read the embedding for it; now the weights-only route gives both rows, with a note."""
    torch = pytest.importorskip("torch")
    tf = pytest.importorskip("transformers")
    import json
    import os

    from safetensors.numpy import load_file, save_file

    import irtools

    folder = tmp_path / "llama"
    torch.manual_seed(0)
    tf.LlamaForCausalLM(tf.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=1,
                                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32,
                                       tie_word_embeddings=False)).save_pretrained(folder)
    path = os.path.join(folder, "model.safetensors")
    weights = load_file(path)
    if same:
        weights["lm_head.weight"] = weights["model.embed_tokens.weight"].copy()
        save_file(weights, path, metadata={"format": "pt"})
    config = json.loads((folder / "config.json").read_text())
    config["tie_word_embeddings"] = True
    (folder / "config.json").write_text(json.dumps(config))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = irtools.analyze(str(folder), metrics=["spectral", "reuse"], min_evals=1, trust=True)
    names = sorted(r["name"] for r in got.layers)
    tied_note = [n for n in got.notes if "ties 'lm_head.weight'" in n]
    if same:
        assert not tied_note and not [n for n in got.notes if n.startswith("reuse metrics left out")]  # the graph
        assert "model.embed_tokens" in names
    else:
        assert tied_note and "lm_head" in names and "model.embed_tokens" in names
