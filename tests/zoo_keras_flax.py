"""The Keras and Flax half of the test zoo: name -> builder of a source `irtools.analyze` accepts.

Keras: `keras.applications` architectures with `weights=None` (no download) at the smallest input
each accepts, and small hand-written models with the layers auditors meet outside them (recurrent
layers on embeddings, attention, separable / transposed / 1-D / 3-D convolutions, group norm,
TimeDistributed, several inputs and outputs, nested and shared sub-models, a subclassed model).
Flax: linen and nnx models written the ordinary way (positional pooling windows, nested modules).
Every builder is deterministic and imports its framework only when called. `REGISTRY` holds both
halves; `KERAS_FAST` names the few `KERAS_ZOO` models the fast test set converts.
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
KERAS_FAST = ("keras-efficientnetb0", "keras-mobilenetv3small", "keras-transformer-block", "keras-conv-mix")


def keras_app(name: str, size: int | None = None):
    """`keras.applications.<name>(weights=None)` on a (size, size, 3) input, classes=10, seeded."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras  # noqa: PLC0415

    keras.utils.set_random_seed(0)
    size = size or KERAS_APPS[name]
    return getattr(keras.applications, name)(weights=None, input_shape=(size, size, 3), classes=10)


def _keras():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras  # noqa: PLC0415

    keras.utils.set_random_seed(0)
    return keras, keras.layers


def keras_recurrent():
    """Embedding -> LSTM (sequences) -> Bidirectional(GRU) -> SimpleRNN -> Dense: token ids in."""
    keras, layers = _keras()
    tokens = keras.Input((12,), dtype="int32", batch_size=1, name="tokens")
    x = layers.Embedding(50, 16, name="embed")(tokens)
    x = layers.LSTM(24, return_sequences=True, name="lstm")(x)
    x = layers.Bidirectional(layers.GRU(12, return_sequences=True, name="gru"), name="bi")(x)
    x = layers.SimpleRNN(16, name="rnn")(x)
    return keras.Model(tokens, layers.Dense(5, name="head")(x), name="recurrent")


def keras_transformer_block():
    """Pre-norm encoder block: LayerNormalization, MultiHeadAttention, Dense on 3-D input (MLP)."""
    keras, layers = _keras()
    inp = keras.Input((10, 32), batch_size=1, name="x")
    h = layers.LayerNormalization(name="ln1")(inp)
    x = layers.Add()([inp, layers.MultiHeadAttention(4, 8, name="mha")(h, h)])
    h = layers.Dense(64, activation="gelu", name="ffn_in")(layers.LayerNormalization(name="ln2")(x))
    x = layers.Add()([x, layers.Dense(32, name="ffn_out")(h)])
    return keras.Model(inp, layers.Dense(6, name="head")(layers.GlobalAveragePooling1D()(x)), name="transformer_block")


def keras_conv_mix():
    """SeparableConv2D, DepthwiseConv2D + BatchNormalization, Conv2DTranspose, UpSampling2D,
    GroupNormalization: a small encoder-decoder."""
    keras, layers = _keras()
    inp = keras.Input((16, 16, 3), batch_size=1, name="image")
    x = layers.Conv2D(8, 3, padding="same", name="stem")(inp)
    x = layers.SeparableConv2D(16, 3, padding="same", activation="relu", name="sep")(x)
    x = layers.BatchNormalization(name="dw_bn")(layers.DepthwiseConv2D(3, strides=2, padding="same", name="dw")(x))
    x = layers.Conv2DTranspose(12, 3, strides=2, padding="same", name="deconv")(x)
    x = layers.GroupNormalization(4, name="gn")(layers.UpSampling2D(2, name="up")(x))
    return keras.Model(inp, layers.Conv2D(4, 1, name="out")(x), name="conv_mix")


def keras_sequence_mix():
    """Conv1D on embeddings and TimeDistributed Conv2D / Dense on frames: two inputs, two outputs."""
    keras, layers = _keras()
    tokens = keras.Input((24,), dtype="int32", batch_size=1, name="tokens")
    frames = keras.Input((3, 10, 10, 3), batch_size=1, name="frames")
    t = layers.Conv1D(16, 5, activation="relu", name="conv1d")(layers.Embedding(40, 12, name="embed")(tokens))
    t = layers.GlobalMaxPooling1D()(layers.Conv1D(16, 3, name="conv1d_b")(layers.MaxPooling1D(2)(t)))
    f = layers.TimeDistributed(layers.Conv2D(8, 3, activation="relu", name="frame_conv"), name="td_conv")(frames)
    f = layers.TimeDistributed(layers.GlobalAveragePooling2D(), name="td_pool")(f)
    f = layers.Flatten()(layers.TimeDistributed(layers.Dense(10, name="frame_fc"), name="td_fc")(f))
    h = layers.Concatenate()([t, f])
    return keras.Model([tokens, frames], [layers.Dense(4, name="cls")(h), layers.Dense(1, name="reg")(h)],
                       name="sequence_mix")


def keras_nested():
    """A Sequential used twice (shared weights) around a nested functional model."""
    keras, layers = _keras()
    block = keras.Sequential([layers.Dense(16, activation="relu", name="d1"), layers.Dense(16, name="d2")], name="block")
    inner_in = keras.Input((16,))
    inner = keras.Model(inner_in, layers.Dense(16, name="proj")(inner_in), name="inner")
    inp = keras.Input((16,), batch_size=1, name="x")
    return keras.Model(inp, layers.Dense(3, name="head")(block(inner(block(inp)))), name="nested")


def keras_subclassed():
    """A subclassed model, built by calling it once (no `keras.Input`)."""
    keras, layers = _keras()

    class Net(keras.Model):
        def __init__(self):
            super().__init__(name="net")
            self.conv = layers.Conv2D(8, 3, name="conv")
            self.bn = layers.BatchNormalization(name="bn")
            self.conv3d = layers.Conv3D(4, (1, 3, 3), name="conv3d")
            self.fc = layers.Dense(4, name="fc")

        def call(self, x, training=False):
            h = keras.ops.relu(self.bn(self.conv(x), training=training))
            h = self.conv3d(keras.ops.expand_dims(h, 1))
            return self.fc(keras.ops.mean(h, axis=(1, 2, 3)))

    net = Net()
    net(np.zeros((1, 12, 12, 3), np.float32))
    return net


KERAS_HAND: dict[str, Callable] = {
    "keras-recurrent": keras_recurrent, "keras-transformer-block": keras_transformer_block,
    "keras-conv-mix": keras_conv_mix, "keras-sequence-mix": keras_sequence_mix, "keras-nested": keras_nested,
    "keras-subclassed": keras_subclassed,
}


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
KERAS_ZOO: dict[str, Callable] = {
    **{f"keras-{name.lower()}": (lambda name=name: keras_app(name)) for name in KERAS_APPS}, **KERAS_HAND}
REGISTRY: dict[str, Callable] = {**KERAS_ZOO, **FLAX_ZOO}
