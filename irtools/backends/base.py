"""The interface every eigenvalue backend implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, slots=True)
class Spectrum:
    """Eigenvalues of W^T W (ascending, float64) and the level below which they are noise.

    All eigenvalues are NaN when W holds NaN or Inf (or W^T W overflows float64): a finding
    that the spectral pass reports, not an error."""

    evals: np.ndarray
    noise_floor: float


class EigenBackend(ABC):
    """Squared singular values of matrices, in float64."""

    name = "abstract"

    @abstractmethod
    def spectra(self, matrices: Sequence[np.ndarray]) -> list[Spectrum]:
        """For each matrix W, the min(W.shape) eigenvalues of W^T W and their noise floor."""

    def stacked_spectra(self, matrices: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray] | None:
        """The spectra of matrices of one shape as arrays: (eigenvalues, one ascending row per matrix; noise
        floors), each row bit for bit `spectra`'s, or None when this backend does not stack them (then the
        caller uses `spectra`). The CPU backend stacks small matrices; the default stacks nothing."""
        return None

    def map_spectra(
        self, sources: Iterable[Callable[[], Sequence[np.ndarray]]]
    ) -> Iterator[tuple[int, Sequence[np.ndarray], list[Spectrum]]]:
        """(index, matrices, spectra) of each layer, in any order; `sources` yields one callable
        per layer that loads its matrices. A backend that batches and overlaps layers (CUDA)
        overrides this; the default computes them one after another."""
        for index, load in enumerate(sources):
            mats = load()
            yield index, mats, self.spectra(mats)
