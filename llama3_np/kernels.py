"""linear(x, w): the one place a matrix multiplication is chosen.

x is float32 (..., in_features); w is (out_features, in_features) as stored:
a float32 ndarray, or a stored tensor (see storage.py) decoded here.
"""

import numpy as np

from .storage import as_float32


def linear(x: np.ndarray, w) -> np.ndarray:
    """x @ w.T in float32."""
    return x @ as_float32(w).T
