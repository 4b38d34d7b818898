"""The Keras and Flax half of the test zoo: name -> builder of a source `irtools.analyze` accepts.

Keras: `keras.applications` architectures with `weights=None` (no download) at the smallest input
each accepts. Flax: linen and nnx models written the ordinary way (positional pooling windows,
nested modules). Every builder is deterministic and imports its framework only when called.
`REGISTRY` holds both halves; `KERAS_FAST` names the few Keras models the fast test set converts.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np

# keras.applications name -> the smallest input height/width it accepts
KERAS_APPS = {
    "EfficientNetB0": 32, "MobileNetV3Small": 32, "MobileNetV2": 32, "ConvNeXtTiny": 32, "ResNet50": 32,
    "DenseNet121": 32, "Xception": 71, "InceptionV3": 75,
}
KERAS_FAST = ("EfficientNetB0", "MobileNetV3Small")


def keras_app(name: str, size: int | None = None):
    """`keras.applications.<name>(weights=None)` on a (size, size, 3) input, classes=10, seeded."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras  # noqa: PLC0415

    keras.utils.set_random_seed(0)
    size = size or KERAS_APPS[name]
    return getattr(keras.applications, name)(weights=None, input_shape=(size, size, 3), classes=10)


# -- Flax ------------------------------------------------------------------------------------------
def _linen():
    import flax.linen as nn  # noqa: PLC0415

    class Block(nn.Module):
        """Conv + BatchNorm + ReLU twice, with a residual add."""

        width: int

        @nn.compact
        def __call__(self, x):
            h = nn.relu(nn.BatchNorm(use_running_average=True)(nn.Conv(self.width, (3, 3))(x)))
            h = nn.BatchNorm(use_running_average=True)(nn.Conv(self.width, (3, 3))(h))
            return nn.relu(x + h) if x.shape[-1] == self.width else nn.relu(h)

    class PoolCNN(nn.Module):
        """The ordinary way: pooling windows as positional arguments (`nn.avg_pool(x, (2, 2), ...)`)."""

        @nn.compact
        def __call__(self, x):
            x = nn.relu(nn.Conv(8, (3, 3))(x))
            x = nn.avg_pool(x, (2, 2), strides=(2, 2))
            x = nn.relu(nn.Conv(16, (3, 3))(x))
            x = nn.max_pool(x, (2, 2), (2, 2))
            x = x.reshape((x.shape[0], -1))
            return nn.Dense(10)(nn.relu(nn.Dense(32)(x)))

    class ResNet(nn.Module):
        """Nested modules: layer names are module paths (`Block_1/Conv_0`)."""

        @nn.compact
        def __call__(self, x):
            x = nn.Conv(16, (3, 3), strides=(2, 2))(x)
            for _ in range(3):
                x = Block(16)(x)
            x = nn.avg_pool(x, (2, 2), (2, 2))
            return nn.Dense(10)(x.mean(axis=(1, 2)))

    return PoolCNN, ResNet


def _init_linen(cls, shape):
    import jax  # noqa: PLC0415

    x = np.asarray(np.random.default_rng(0).standard_normal(shape), dtype=np.float32)
    module = cls()
    return module, module.init(jax.random.PRNGKey(0), x), (x,)


def linen_pool_cnn():
    return _init_linen(_linen()[0], (1, 16, 16, 3))


def linen_resnet():
    return _init_linen(_linen()[1], (1, 16, 16, 3))


def _nnx():
    from flax import nnx  # noqa: PLC0415

    class CNN(nnx.Module):
        def __init__(self, rngs):
            self.c1 = nnx.Conv(3, 16, (3, 3), rngs=rngs)
            self.bn1 = nnx.BatchNorm(16, rngs=rngs)
            self.c2 = nnx.Conv(16, 24, (3, 3), rngs=rngs)
            self.fc = nnx.Linear(24, 10, rngs=rngs)

        def __call__(self, x):
            x = nnx.avg_pool(nnx.relu(self.bn1(self.c1(x))), (2, 2), (2, 2))
            x = nnx.relu(self.c2(x))
            return self.fc(x.mean(axis=(1, 2)))

    class MLP(nnx.Module):
        def __init__(self, rngs):
            self.l1 = nnx.Linear(24, 48, rngs=rngs)
            self.norm = nnx.LayerNorm(48, rngs=rngs)
            self.drop = nnx.Dropout(0.1, rngs=rngs)
            self.l2 = nnx.Linear(48, 32, rngs=rngs)
            self.out = nnx.Linear(32, 10, rngs=rngs)

        def __call__(self, x):
            x = self.drop(nnx.gelu(self.norm(self.l1(x))))
            return self.out(nnx.relu(self.l2(x)))

    return CNN, MLP


def _init_nnx(cls, shape):
    from flax import nnx  # noqa: PLC0415

    x = np.asarray(np.random.default_rng(0).standard_normal(shape), dtype=np.float32)
    return cls(nnx.Rngs(0)), None, (x,)


def nnx_cnn():
    return _init_nnx(_nnx()[0], (1, 16, 16, 3))


def nnx_mlp():
    return _init_nnx(_nnx()[1], (1, 24))


FLAX_ZOO: dict[str, Callable] = {
    "flax-linen-pool-cnn": linen_pool_cnn, "flax-linen-resnet": linen_resnet,
    "flax-nnx-cnn": nnx_cnn, "flax-nnx-mlp": nnx_mlp,
}
KERAS_ZOO: dict[str, Callable] = {f"keras-{name.lower()}": (lambda name=name: keras_app(name)) for name in KERAS_APPS}
REGISTRY: dict[str, Callable] = {**KERAS_ZOO, **FLAX_ZOO}
