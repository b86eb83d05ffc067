"""Fixtures shared by several test modules."""

import os

import pytest


@pytest.fixture(autouse=True, scope="session")
def fast_path_cache(tmp_path_factory):
    """Measured fast paths (``precision="auto"``) are cached for the session in a temporary folder,
    not in the user's ~/.cache; notebook kernels and subprocesses inherit the variable."""
    os.environ["MTILIB_CACHE_DIR"] = str(tmp_path_factory.mktemp("mtilib-cache"))
    yield
    os.environ.pop("MTILIB_CACHE_DIR", None)


@pytest.fixture
def close_figures():
    """Close every matplotlib figure a test opened (the viz tests draw many)."""
    yield
    import matplotlib.pyplot as plt

    plt.close("all")
