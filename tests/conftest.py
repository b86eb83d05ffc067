"""Fixtures shared by several test modules."""

import pytest


@pytest.fixture
def close_figures():
    """Close every matplotlib figure a test opened (the viz tests draw many)."""
    yield
    import matplotlib.pyplot as plt

    plt.close("all")
