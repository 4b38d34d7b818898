"""`irtools report`: the self-contained HTML page, checked by parsing it and, where Chromium is
installed, by rendering it headless (set IRTOOLS_REQUIRE_BROWSER=1 to make a missing browser fail)."""

from __future__ import annotations

import base64
import io
import math
import os
import shutil
import struct
from html.parser import HTMLParser

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import helper as h
from scipy import integrate, stats

import irtools
from irtools.cli import main
from irtools.reports.compare import compare
from irtools.reports.html import ESD_DPI, ESD_SIZE, FLAG_CLASSES, context_counts_by_depth, pareto_density
from tests import builders as b
from tests.brute_force import brute_force_counts
from tests.conftest import EXAMPLE

SHAPE = "image=1,1,8,8"
ARTIFACTS = os.path.join(os.path.dirname(__file__), "artifacts")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class Page(HTMLParser):
    """The parts of a report page the tests look at."""

    def __init__(self, text: str):
        super().__init__()
        self.tables: list[dict] = []  # {"class", "head", "rows": [{"class", "cells": [(data-v, text)]}]}
        self.images: list[dict] = []
        self.figures: list[dict] = []
        self.scripts: list[str] = []
        self._cell = None
        self._in_head = False
        self._script = False
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "table":
            self.tables.append({"class": a.get("class", ""), "head": [], "rows": []})
        elif tag == "thead":
            self._in_head = True
        elif tag == "tbody":
            self._in_head = False
        elif tag == "tr" and self.tables and not self._in_head:
            self.tables[-1]["rows"].append({"class": a.get("class", "") or "", "cells": []})
        elif tag in ("td", "th") and self.tables:
            self._cell = [a.get("data-v"), ""]
        elif tag == "img":
            self.images.append(a)
        elif tag == "figure":
            self.figures.append(a)
        elif tag == "script":
            self._script = True
            self.scripts.append(a.get("src", ""))

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            t = self.tables[-1]
            if self._in_head:
                t["head"].append(self._cell[1])
            elif t["rows"]:
                t["rows"][-1]["cells"].append(tuple(self._cell))
            self._cell = None
        elif tag == "script":
            self._script = False

    def handle_data(self, data):
        if self._cell is not None:
            self._cell[1] += data

    def table(self, cls: str) -> list[dict]:
        return [t for t in self.tables if cls in t["class"].split()]


def column(table: dict, name: str) -> list[str]:
    k = table["head"].index(name)
    return [r["cells"][k][0] for r in table["rows"]]


def as_float(v: str) -> float:
    return float(v) if v else math.nan


def check_images(page: Page) -> list[tuple[int, int]]:
    """Every <img> is a data: URI holding a PNG that Pillow decodes; returns their sizes."""
    from PIL import Image

    sizes = []
    assert page.images
    for img in page.images:
        src = img["src"]
        assert src.startswith("data:image/png;base64,"), src[:40]
        raw = base64.b64decode(src.split(",", 1)[1], validate=True)
        assert raw[:8] == PNG_SIGNATURE
        width, height = struct.unpack(">II", raw[16:24])  # the IHDR chunk
        with Image.open(io.BytesIO(raw)) as im:
            im.load()
            assert im.size == (width, height)
            sizes.append(im.size)
    return sizes


def check_highlights(layers: dict, warnings) -> None:
    """A row carries a highlight class exactly when its layer's warning is a flag."""
    for row, warning in zip(layers["rows"], warnings, strict=True):
        flags = set(row["class"].split()) & set(FLAG_CLASSES.values())
        assert flags == ({FLAG_CLASSES[warning]} if warning in FLAG_CLASSES else set())


def run_report(*args) -> None:
    res = CliRunner().invoke(main, ["report", *args])
    assert res.exit_code == 0, res.output


@pytest.fixture(scope="module")
def digits_report(tmp_path_factory):
    out = tmp_path_factory.mktemp("report") / "digits.html"
    run_report(EXAMPLE, "--input-shape", SHAPE, "-o", str(out))
    return str(out)


def mlp_file(path, seed: int, constant: bool = False) -> str:
    """x[1,32] -> MatMul w1 (32 x 48) -> Relu -> MatMul w2 (48 x 24) -> y; w2 all ones when `constant`."""
    rng = np.random.default_rng(seed)
    w2 = np.ones((48, 24), np.float32) if constant else rng.standard_normal((48, 24)).astype(np.float32)
    proto = b.model([h.make_node("MatMul", ["x", "w1"], ["a"], name="dense1"), h.make_node("Relu", ["a"], ["r"]),
                     h.make_node("MatMul", ["r", "w2"], ["y"], name="dense2")],
                    [b.vinfo("x", [1, 32])], [b.vinfo("y", [1, 24])],
                    [b.tensor("w1", rng.standard_t(3, size=(32, 48)).astype(np.float32)), b.tensor("w2", w2)])
    onnx.save(proto, str(path))
    return str(path)


def test_pareto_density_is_the_fitted_tail_scaled_to_its_share():
    alpha, xmin, share = 2.7, 0.35, 0.2
    x = np.geomspace(0.01, 100, 200)
    expected = share * stats.pareto(b=alpha - 1, scale=xmin).pdf(x)
    assert np.allclose(pareto_density(x, alpha, xmin, share), expected, rtol=1e-12, atol=0)
    total, _ = integrate.quad(lambda t: pareto_density(np.array([t]), alpha, xmin, share)[0], xmin, np.inf)
    assert total == pytest.approx(share)


def test_single_model_page(digits_report):
    page = Page(open(digits_report, encoding="utf-8").read())
    a = irtools.analyze(EXAMPLE, input_shapes={"image": (1, 1, 8, 8)})
    d = a.details
    (layers,) = page.table("layers")
    assert len(layers["rows"]) == len(d) > 0
    assert [int(v) for v in column(layers, "layer_id")] == list(d["layer_id"])
    got = [as_float(v) for v in column(layers, "alpha")]
    assert all((math.isnan(x) and math.isnan(y)) or x == y for x, y in zip(got, d["alpha"], strict=True))
    assert [as_float(v) for v in column(layers, "log_spectral_norm")] == pytest.approx(list(d["log_spectral_norm"]))
    check_highlights(layers, d["warning"])
    assert any(w in FLAG_CLASSES for w in d["warning"])  # the example has a flagged layer to show
    esd = [f for f in page.figures if "esd" in f["class"].split()]
    assert [int(f["data-layer-id"]) for f in esd] == list(d["layer_id"])
    sizes = check_images(page)
    esd_px = (round(ESD_SIZE[0] * ESD_DPI), round(ESD_SIZE[1] * ESD_DPI))
    assert sizes.count(esd_px) == len(d)
    alts = [img["alt"] for img in page.images]
    assert "correlation flow" in alts and "context counts by depth" in alts
    assert all(not s for s in page.scripts)  # inline scripts only: nothing fetched
    text = open(digits_report, encoding="utf-8").read()
    assert "http://" not in text and "https://" not in text
    summary = {r["cells"][0][1]: r["cells"][1][1] for t in page.table("summary") for r in t["rows"]}
    assert float(summary["performance_surprisal"]) == pytest.approx(a.reuse["performance_surprisal"], rel=1e-3)
    assert float(summary["alpha"]) == pytest.approx(a.summary["alpha"], rel=1e-3)


def test_context_counts_by_depth_against_brute_force():
    proto = b.mlp()  # fc1 (Gemm, node 0) <- fc1.weight, fc1.bias; Relu; fc2 (MatMul, node 2); Add (node 3)
    model = irtools.load(proto)
    irtools.run_passes(model, ["context-counts"])
    rows = context_counts_by_depth(model)
    truth = brute_force_counts(proto)
    expected = {0: ("fc1", ["fc1.weight", "fc1.bias"]), 2: ("fc2", ["fc2.weight"]), 3: (None, ["fc2.bias"])}
    assert [r["depth"] for r in rows] == sorted(expected)
    for r in rows:
        node, params = expected[r["depth"]]
        if node:
            assert r["node"] == node
        values = np.log2(np.concatenate([np.ravel(truth[p]) for p in params]).astype(float))
        assert r["scalars"] == values.size
        q = np.quantile(values, [0, 0.25, 0.5, 0.75, 1])
        assert [r["min"], r["q1"], r["median"], r["q3"], r["max"]] == pytest.approx(q)


def test_degenerate_layer_is_highlighted(tmp_path):
    path = mlp_file(tmp_path / "const.onnx", 3, constant=True)
    out = tmp_path / "const.html"
    run_report(path, "-o", str(out))
    page = Page(out.read_text(encoding="utf-8"))
    (layers,) = page.table("layers")
    names = [r["cells"][layers["head"].index("name")][1] for r in layers["rows"]]
    warnings = [r["cells"][layers["head"].index("warning")][1] for r in layers["rows"]]
    classes = {n: set(r["class"].split()) for n, r in zip(names, layers["rows"], strict=True)}
    assert warnings[names.index("dense2")] == "degenerate"  # all-ones weight: rank one
    assert "flag-degenerate" in classes["dense2"]
    check_highlights(layers, irtools.analyze(path).details["warning"])
    esd = {f["data-layer-id"]: set(f["class"].split()) for f in page.figures}
    assert "flag-degenerate" in esd[str(names.index("dense2"))]
    check_images(page)


def test_two_models_overlaid_with_comparison_table(tmp_path):
    digits = onnx.load(EXAMPLE)  # with a static batch, so that no --input-shape is needed for either model
    digits.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1
    first = str(tmp_path / "digits_static.onnx")
    onnx.save(digits, first)
    other = mlp_file(tmp_path / "mlp.onnx", 5)
    out = tmp_path / "two.html"
    run_report(first, other, "-o", str(out))
    page = Page(out.read_text(encoding="utf-8"))
    (table,) = page.table("comparison")
    models = [r["cells"][0][1] for r in table["rows"]]
    assert models == [first, other]
    truth = compare([first, other])
    for metric in ("alpha", "log_spectral_norm", "P_G"):
        assert [as_float(v) for v in column(table, metric)] == pytest.approx([r[metric] for r in truth["models"]])
    assert len(page.table("layers")) == 2  # one per-layer table per model
    n_layers = len(irtools.analyze(other).details) + len(irtools.analyze(first).details)
    assert sum("esd" in f["class"].split() for f in page.figures) == n_layers
    alts = [img["alt"] for img in page.images]
    assert alts.count("correlation flow") == 1 and alts.count("context counts by depth") == 1  # overlaid once
    check_images(page)


def test_weights_only_input_says_there_is_no_graph(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "w.npz"
    np.savez(path, **{"fc.weight": rng.standard_normal((40, 30)).astype(np.float32)})
    out = tmp_path / "w.html"
    run_report(str(path), "-o", str(out))
    text = out.read_text(encoding="utf-8")
    page = Page(text)
    assert "no computation graph" in text
    assert len(page.table("layers")[0]["rows"]) == 1
    assert "context counts by depth" not in [img["alt"] for img in page.images]
    check_images(page)


@pytest.mark.parametrize("args, message", [
    (["missing.onnx"], "no such file"),
    ([EXAMPLE, "--input-shape", "image=oops"], "input-shape"),
])
def test_bad_input_is_one_line(tmp_path, args, message):
    out = tmp_path / "r.html"
    res = CliRunner().invoke(main, ["report", *args, "-o", str(out)])
    assert res.exit_code == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("irtools: error:") and message in lines[0].lower()
    assert not out.exists()


def test_report_never_overwrites_its_input(tmp_path):
    path = mlp_file(tmp_path / "m.onnx", 1)
    before = open(path, "rb").read()
    res = CliRunner().invoke(main, ["report", path, "-o", path])
    assert res.exit_code == 2 and "overwrite" in res.stderr
    assert open(path, "rb").read() == before


def _browser():
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    try:
        import selenium  # noqa: F401
    except ImportError:
        return None, None, "selenium is not installed (pip install selenium)"
    if not (chromium and driver):
        return None, None, "chromium and chromedriver are not on PATH (apt-get install chromium chromium-driver)"
    return chromium, driver, ""


def test_page_renders_in_headless_chromium(digits_report):
    chromium, driver_path, why = _browser()
    if why:
        if os.environ.get("IRTOOLS_REQUIRE_BROWSER") == "1":
            pytest.fail(f"IRTOOLS_REQUIRE_BROWSER=1 but {why}")
        pytest.skip(why)
    os.environ.setdefault("SE_AVOID_STATS", "true")  # selenium-manager must not phone home
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--window-size=1400,1800"):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service(driver_path))
    try:
        driver.get("file://" + os.path.abspath(digits_report))
        images = driver.execute_script(
            "return Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.alt]);")
        assert images and all(done and width > 0 for done, width, _ in images), images
        table = driver.find_element(By.CSS_SELECTOR, "table.layers")
        heads = [th.text.strip() for th in table.find_elements(By.CSS_SELECTOR, "thead th")]
        k = heads.index("alpha")

        def alphas():
            return [as_float(td.get_attribute("data-v"))
                    for td in table.find_elements(By.CSS_SELECTOR, f"tbody tr td:nth-child({k + 1})")]

        before = alphas()
        assert before != sorted(before)  # the example's layers are not already in alpha order
        table.find_elements(By.CSS_SELECTOR, "thead th")[k].click()
        assert alphas() == sorted(before)
        table.find_elements(By.CSS_SELECTOR, "thead th")[k].click()
        assert alphas() == sorted(before, reverse=True)
        img = driver.find_element(By.CSS_SELECTOR, "img.esd")
        small = img.size["width"]
        img.click()
        assert img.size["width"] > small  # a thumbnail expands when clicked
        img.click()
        os.makedirs(ARTIFACTS, exist_ok=True)
        assert driver.save_screenshot(os.path.join(ARTIFACTS, "report.png"))
    finally:
        driver.quit()
