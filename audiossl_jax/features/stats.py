"""Per-mel-bin mean and standard deviation, accumulated exactly in float64 and mergeable."""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass
class MelStats:
    """Running count, sum and sum of squares of log-mel values per bin."""

    count: int  # frames seen
    total: np.ndarray  # float64 [mel]
    total_sq: np.ndarray  # float64 [mel]

    @classmethod
    def zeros(cls, mel_bins: int) -> MelStats:
        return cls(0, np.zeros(mel_bins), np.zeros(mel_bins))

    def add(self, features: np.ndarray) -> None:
        """Adds frames [frames, mel] (any float dtype)."""
        x = np.asarray(features, np.float64)
        self.count += x.shape[0]
        self.total += x.sum(axis=0)
        self.total_sq += np.square(x).sum(axis=0)

    def merge(self, other: MelStats) -> MelStats:
        return MelStats(self.count + other.count, self.total + other.total, self.total_sq + other.total_sq)

    def mean_std(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-bin mean and (population) std; std floored at 1e-5 so dividing by it is safe."""
        if self.count == 0:
            raise ValueError("no frames were accumulated; mean/std are undefined")
        mean = self.total / self.count
        var = np.maximum(self.total_sq / self.count - mean**2, 0.0)
        return mean, np.maximum(np.sqrt(var), 1e-5)

    def global_mean_std(self) -> tuple[float, float]:
        """Mean and std over all bins together (EAT/AST normalise with one scalar pair)."""
        if self.count == 0:
            raise ValueError("no frames were accumulated; mean/std are undefined")
        n = self.count * self.total.shape[0]
        mean = self.total.sum() / n
        return float(mean), float(np.sqrt(max(self.total_sq.sum() / n - mean**2, 0.0)))

    def to_json(self) -> dict:
        return {"count": self.count, "sum": self.total.tolist(), "sum_sq": self.total_sq.tolist()}

    @classmethod
    def from_json(cls, d: dict) -> MelStats:
        return cls(int(d["count"]), np.asarray(d["sum"], np.float64), np.asarray(d["sum_sq"], np.float64))
