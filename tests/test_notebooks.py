"""Every course notebook runs in QUICK mode through the course runner, and its metrics.json holds
meaningful values. Ranges are the *teaching* claims of each notebook, not exact numbers."""

import math

import pytest

from mtilib.course import NOTEBOOK_DIR, discover, run_notebook

# notebook number -> {metric: (low, high)} or {metric: exact value}; every notebook must appear here
EXPECTED: dict[str, dict] = {
    "00": {"n_cases": (35, 200), "n_classes_in_samples": 7, "hcc_brightest_phase": "arterial"},
}


def check_metrics(name: str, metrics: dict, expected: dict) -> list[str]:
    problems = []
    for key, want in expected.items():
        if key not in metrics:
            problems.append(f"{name}: metrics.json has no {key!r}")
            continue
        got = metrics[key]
        if isinstance(want, tuple):
            low, high = want
            if not (isinstance(got, (int, float)) and math.isfinite(got) and low <= got <= high):
                problems.append(f"{name}: {key}={got!r} outside [{low}, {high}]")
        elif got != want:
            problems.append(f"{name}: {key}={got!r}, expected {want!r}")
    return problems


NOTEBOOKS = discover(NOTEBOOK_DIR)


def test_every_notebook_has_expectations():
    missing = [p.name for p in NOTEBOOKS if p.name[:2] not in EXPECTED]
    assert not missing, f"add metric expectations for {missing} in tests/test_notebooks.py"


@pytest.mark.notebook
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_in_quick_mode(path, tmp_path_factory):
    out = tmp_path_factory.mktemp("course")
    result = run_notebook(path, out, quick=True)
    assert result.status == "ok", result.error
    problems = check_metrics(path.name, result.metrics, EXPECTED.get(path.name[:2], {}))
    assert not problems, "\n".join(problems)
