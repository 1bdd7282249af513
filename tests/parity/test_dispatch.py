"""The second parity run disables NumPy's AVX-512 code (see the README's test command);
a misspelt group name would leave it on, and that run would silently repeat the first."""

import os

import pytest
from numpy._core._multiarray_umath import __cpu_features__ as features

pytestmark = pytest.mark.parity


def test_disabled_cpu_features_took_effect():
    for name in os.environ.get("NPY_DISABLE_CPU_FEATURES", "").replace(",", " ").split():
        assert features.get(name) is False, f"NumPy still dispatches {name}"
