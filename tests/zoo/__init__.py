"""The test zoo: tiny, randomly initialised architectures of today's most audited model families.

`REGISTRY` maps a model name to a builder returning `(module, example_inputs)`, what
`irtools.analyze` accepts for a PyTorch source (Keras and Flax builders may return their own
sources). `transformers_zoo` fills it with models built from `transformers` configuration
classes (no download), `torch_zoo` with hand-written PyTorch architectures (recurrent, U-Net,
mixture of experts, GNN, parametrizations, torch.nn attention); other frontends' zoo modules add
their builders with `register`. `half(name)` says which module registered a model.
"""

from __future__ import annotations

from collections.abc import Callable

#: name -> builder; a builder takes no argument and returns an `irtools.analyze` source.
REGISTRY: dict[str, Callable[[], object]] = {}
#: name -> family ("decoder", "encoder", "seq2seq", "vision", "conv", "audio", ...).
FAMILY: dict[str, str] = {}


def register(name: str, family: str):
    def wrap(builder):
        REGISTRY[name] = builder
        FAMILY[name] = family
        return builder

    return wrap


def half(name: str) -> str:
    """The zoo module that registered `name` ("transformers_zoo", "torch_zoo", ...)."""
    return REGISTRY[name].__module__.rpartition(".")[2]


def load_all(keras_flax: bool = False) -> dict[str, Callable[[], object]]:
    """Import the torch zoo and the transformers zoo (when installed) and return the registry; with
    `keras_flax`, the Keras and Flax half (`tests/zoo_keras_flax.py`) too, when its frameworks are."""
    import importlib

    for module in ("tests.zoo.torch_zoo", "tests.zoo.transformers_zoo"):  # each registers its builders
        try:
            importlib.import_module(module)
        except ImportError:
            pass
    if not keras_flax:
        return dict(REGISTRY)
    try:
        from tests.zoo_keras_flax import REGISTRY as keras_flax_zoo
    except ImportError:
        keras_flax_zoo = {}
    for name in keras_flax_zoo:
        FAMILY.setdefault(name, "keras/flax")
    return {**REGISTRY, **keras_flax_zoo}
