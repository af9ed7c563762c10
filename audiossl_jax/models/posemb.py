"""Fixed sin-cos position embeddings (MAE / Audio-MAE / EAT convention)."""

from __future__ import annotations

import numpy as np


def sincos_1d(dim: int, positions: np.ndarray) -> np.ndarray:
    """[len(positions), dim]: sin of position x frequency in the first half, cos in the second.

    Frequencies are 1 / 10000^(i / (dim/2)) for i < dim/2, as in MAE's `get_1d_sincos_pos_embed_from_grid`.
    """
    if dim % 2:
        raise ValueError(f"sin-cos position embedding needs an even width, got {dim}")
    omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
    angles = np.asarray(positions, np.float64).reshape(-1)[:, None] * omega[None, :]
    return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)


def sincos_2d(dim: int, rows: int, cols: int) -> np.ndarray:
    """[rows * cols, dim] float32 embeddings of a row-major grid (index = row * cols + col).

    Follows MAE's `get_2d_sincos_pos_embed_flexible`: the first dim/2 channels encode the column index
    and the last dim/2 the row index. For audio patches rows are time and columns are mel patches.
    """
    if dim % 4:
        raise ValueError(f"2-D sin-cos position embedding needs a width divisible by 4, got {dim}")
    row, col = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    emb = np.concatenate([sincos_1d(dim // 2, col), sincos_1d(dim // 2, row)], axis=1)
    return emb.astype(np.float32)
