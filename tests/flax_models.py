"""Flax test architectures shared by the JAX frontend and cross-framework tests (imports flax)."""

import flax.linen as nn


class CNN(nn.Module):
    """Conv + BatchNorm + ReLU, a residual add, max pooling, global mean, Dense."""

    width: int = 6
    classes: int = 4

    @nn.compact
    def __call__(self, x):
        h = nn.relu(nn.BatchNorm(use_running_average=True, epsilon=1e-5, name="bn1")(
            nn.Conv(self.width, (3, 3), padding="SAME", name="c1")(x)))
        r = nn.BatchNorm(use_running_average=True, epsilon=1e-5, name="bn2")(
            nn.Conv(self.width, (3, 3), padding="SAME", name="c2")(h))
        h = nn.relu(h + r)
        h = nn.max_pool(h, (2, 2), strides=(2, 2))  # positional window: the frontend adapts jax2onnx's shim
        return nn.Dense(self.classes, name="fc")(h.mean(axis=(1, 2)))
