"""Weight layers: a node's (or a weights file's) weight as named 2-D matrices, loaded on demand.

What the `weights` pass and the weights-only frontend produce and the `spectral` pass consumes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np


@dataclass(slots=True)
class WeightLayer:
    """One analysed layer: a node's weight as a list of 2-D matrices (loaded on demand)."""

    name: str  # layer name (node display name, with a suffix for gates / slices / splits)
    node: str
    op_type: str
    layer_type: str  # dense | conv1d | conv2d | conv3d | conv_transpose | embedding | lstm | gru | rnn | matrix
    parameter: str  # the learnable parameter behind it
    weight_shape: tuple[int, ...]
    N: int  # rows of each matrix after transposing to N >= M
    M: int
    rf: int  # matrices pooled into one ESD (kernel positions)
    eigen_scale: float  # eigenvalue multiplier (WeightWatcher's conv2d_norm: 0.5 when pooled)
    groups: int = 1
    loader: Callable[[], list[np.ndarray]] = field(default=None, repr=False)
    shared_with: list[str] = field(default_factory=list)  # other nodes computing with the same weight
    sources: tuple[str, ...] = ()  # the learnable parameters the weight is computed from (itself, or g and v)
    #: Extra facts shown as columns of the layer's spectral row, in this order (e.g. the storage format of a
    #: quantized weight, an adapter's rank and scale, an expert's index). Keys must not be `COLUMNS` names.
    extra: dict = field(default_factory=dict)

    @property
    def num_evals(self) -> int:
        return self.M * self.rf

    def matrices(self) -> list[np.ndarray]:
        return self.loader()
