"""The interface every eigenvalue backend implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, slots=True)
class Spectrum:
    """Eigenvalues of W^T W (ascending, float64) and the level below which they are noise."""

    evals: np.ndarray
    noise_floor: float


class EigenBackend(ABC):
    """Squared singular values of matrices, in float64."""

    name = "abstract"

    @abstractmethod
    def spectra(self, matrices: Sequence[np.ndarray]) -> list[Spectrum]:
        """For each matrix W, the min(W.shape) eigenvalues of W^T W and their noise floor."""
