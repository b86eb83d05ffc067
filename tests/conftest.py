"""Fixtures shared by several test modules."""

import os

import pytest


def pytest_configure(config):
    """Under pytest-xdist each worker gets one core's worth of threads (the workers share the
    machine's cores); notebook kernels and subprocesses inherit the setting."""
    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if workers and os.environ.get("PYTEST_XDIST_WORKER"):
        threads = str(max(1, (os.cpu_count() or 1) // int(workers)))
        for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ.setdefault(name, threads)
        import torch

        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


def pytest_collection_modifyitems(config, items):
    """Notebook rehearsals first, then the other slow tests, then the rest (a stable sort: the
    order within each group is kept). Under ``--dist worksteal`` (``make test``) a worker that runs
    out of tests takes half of a busy one's queue, so the run ends on a short test, not with one
    worker idle while the other finishes a minute-long notebook."""
    def cost_group(item):
        if item.get_closest_marker("notebook"):
            return 0
        return 1 if item.get_closest_marker("slow") else 2

    items.sort(key=cost_group)


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


@pytest.fixture
def load_script():
    """``load_script("make_checkpoint")``: ``scripts/make_checkpoint.py`` imported as a module
    (the scripts are not a package)."""
    import importlib.util
    from pathlib import Path

    scripts = Path(__file__).resolve().parents[1] / "scripts"

    def load(name: str):
        spec = importlib.util.spec_from_file_location(name, scripts / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load
