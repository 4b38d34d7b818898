"""`irtools.compat.weightwatcher` against WeightWatcher 0.7.7: describe(peft=, base_model=), and every option
WeightWatcher's analyze() and describe() accept, walked from WeightWatcher's own signatures: each one either
matches WeightWatcher (to 1e-6) or is refused in one line that names it (never with a model's repr)."""

from __future__ import annotations

import logging

import pandas as pd
import pytest

torch = pytest.importorskip("torch")
weightwatcher = pytest.importorskip("weightwatcher")

import irtools.compat.weightwatcher as ww
from irtools.errors import IrtoolsError
from tests.test_compat_weightwatcher import Adapted, Net, assert_close_table, peft_model

logging.getLogger("weightwatcher").setLevel(logging.ERROR)


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return Net()


@pytest.fixture(scope="module")
def tuned(net):
    """`net` with every weight moved a little (a fine-tune of it)."""
    torch.manual_seed(7)
    model = Net()
    model.load_state_dict(net.state_dict())
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


# -- describe(peft=..., base_model=...) ---------------------------------------------------------------------

@pytest.mark.parametrize("config", [{"r": 8, "lora_alpha": 16}, {"r": 8, "rank_pattern": {"fc2": 16, "fc3": 10}}])
@pytest.mark.parametrize("peft_value", [True, "with_base", "peft_only", False])
def test_describe_peft_matches_weightwatcher(tmp_path, config, peft_value):
    """The rows analyze(peft=...) has, as WeightWatcher's describe lists them: a B·A row's num_evals is M x rf
    of the product (not r), a peft column on every row; the model and its saved adapter folder."""
    model = peft_model(**config)
    folder = tmp_path / "adapter"
    model.save_pretrained(folder)
    for source in (model, str(folder)):
        if peft_value == "with_base" and source != model:  # the folder: the layer before lora_B is lora_A
            with pytest.raises(ValueError, match="broadcast"):
                weightwatcher.WeightWatcher(model=source).describe(peft=peft_value)
            with pytest.raises(IrtoolsError, match="is not the base of B·A"):
                ww.WeightWatcher(model=source).describe(peft=peft_value)
            continue
        theirs = weightwatcher.WeightWatcher(model=source).describe(peft=peft_value)
        ours = ww.WeightWatcher(model=source).describe(peft=peft_value)
        pd.testing.assert_frame_equal(ours, theirs)
        if peft_value:
            assert ours.longname.str.contains("lora_BA").sum() == 3 and ours.peft.dtype == bool


def test_describe_peft_lists_what_analyze_analyses():
    """describe(peft=) and analyze(peft=) have the same rows (ids, names, shapes)."""
    model = peft_model(r=8, lora_alpha=16)
    watcher = ww.WeightWatcher(model=model)
    for value in (True, "with_base"):
        listed, analysed = watcher.describe(peft=value), watcher.analyze(peft=value)
        key = ["layer_id", "name", "longname", "layer_type", "N", "M", "rf", "peft"]
        pd.testing.assert_frame_equal(listed[key], analysed[key])


def test_describe_base_model_matches_weightwatcher(net, tuned):
    theirs = weightwatcher.WeightWatcher(model=tuned, base_model=net).describe()
    pd.testing.assert_frame_equal(ww.WeightWatcher(model=tuned, base_model=net).describe(), theirs)
    pd.testing.assert_frame_equal(ww.WeightWatcher().describe(model=tuned, base_model=net), theirs)
    with pytest.raises(ww.UnsupportedOptionError, match=r"describe\(\): base_model= is supported only with pool=True"):
        ww.WeightWatcher(model=tuned, base_model=net).describe(pool=False)
    with pytest.raises(IrtoolsError, match="got int"):
        ww.WeightWatcher(model=tuned).describe(base_model=42)


def test_base_model_wins_over_peft_as_in_weightwatcher():
    """base_model= and peft= together: WeightWatcher's delta iterator (no B·A rows, no peft column)."""
    one, two = peft_model(r=8, lora_alpha=16), peft_model(r=8, lora_alpha=16)
    torch.manual_seed(3)
    with torch.no_grad():
        for p in two.parameters():
            p.add_(0.05 * torch.randn_like(p))
    theirs = weightwatcher.WeightWatcher(model=one, base_model=two).describe(peft=True)
    pd.testing.assert_frame_equal(ww.WeightWatcher(model=one, base_model=two).describe(peft=True), theirs)
    assert "peft" not in theirs.columns
    theirs = weightwatcher.WeightWatcher(model=one, base_model=two).analyze(peft=True, layers=[14, 19, 21])
    ours = ww.WeightWatcher(model=one, base_model=two).analyze(peft=True, layers=[14, 19, 21])
    assert_close_table(ours, theirs)
    with pytest.raises(ww.UnsupportedOptionError, match=r"analyze\(\): peft=True is supported only with pool=True"):
        ww.WeightWatcher(model=one).analyze(peft=True, ww2x=True)
