"""The course runner: parameters injected, failures named with notebook and cell, summary table."""

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from mtilib.cli import main
from mtilib.course import discover, run_course, summary_table


def _write(path, cells):
    nb = new_notebook(cells=cells, metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                            "language": "python"}})
    nbformat.write(nb, path)


def _params_cell():
    cell = new_code_cell('QUICK = False\nSEED = 0\nDEVICE = "auto"\nDATA_DIR = "."\nOUT_DIR = "."')
    cell.metadata["tags"] = ["parameters"]
    return cell


def test_runner_injects_parameters_and_reports_failures(tmp_path):
    books = tmp_path / "notebooks"
    books.mkdir()
    _write(books / "01_good.ipynb", [
        new_markdown_cell("# good"), _params_cell(),
        new_code_cell("from mtilib.course import write_metrics\n"
                      "write_metrics(OUT_DIR, quick=QUICK, seed=SEED)"),
    ])
    _write(books / "02_bad.ipynb", [
        new_markdown_cell("# bad"), _params_cell(), new_code_cell("x = 1"),
        new_code_cell("raise ValueError('deliberate failure for the test')"),
    ])
    _write(books / "03_silent.ipynb", [new_markdown_cell("# no metrics"), _params_cell(), new_code_cell("y = 2")])
    assert [p.name for p in discover(books)] == ["01_good.ipynb", "02_bad.ipynb", "03_silent.ipynb"]
    out = tmp_path / "out"
    messages = []
    results = run_course(quick=True, seed=7, out=out, notebook_dir=books, echo=messages.append)
    good, bad, silent = results
    assert good.status == "ok" and good.metrics == {"quick": True, "seed": 7}
    assert (out / "01_good.ipynb").exists() and (out / "01_good" / "metrics.json").exists()
    assert bad.status == "failed"
    assert "02_bad.ipynb" in bad.error and "cell" in bad.error and "deliberate failure" in bad.error
    assert "ValueError" in bad.error
    assert silent.status == "failed" and "no metrics.json" in silent.error
    table = summary_table(results)
    assert "01_good.ipynb" in table and "failed" in table and "quick=True" in table
    assert any("deliberate failure" in m for m in messages)
    assert (out / "summary.json").exists()


def test_cli_version_and_info(capsys):
    import pytest

    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert "mtilib 0.1.0" in capsys.readouterr().out
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "torch" in out and "device:" in out and "cpu_native_bf16" in out
    # the measured choice of precision="auto" / channels_last="auto", with the figures behind it
    assert "fast_paths:" in out and "ms_per_step:" in out and "'fp32':" in out
    assert any(line.split() in (["precision:", "fp32"], ["precision:", "bf16"]) for line in out.splitlines())


def _book(path, code_cells, budget_s=None):
    cells = [new_markdown_cell("# test"), _params_cell()] + [new_code_cell(c) for c in code_cells]
    nb = new_notebook(cells=cells, metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                            "language": "python"}})
    if budget_s is not None:
        nb.metadata["mtilib"] = {"budget_s": {"quick": budget_s, "full": 10 * budget_s}}
    nbformat.write(nb, path)
    return path


WRITE = "from mtilib.course import write_metrics\nwrite_metrics(OUT_DIR, done=True)"


@pytest.mark.slow
def test_a_kernel_that_stops_answering_is_detected_and_retried_once(tmp_path):
    """An idle kernel with a cell still running is what a lost message looks like."""
    from mtilib.course import run_notebook

    book = _book(tmp_path / "01_sleeps.ipynb", ["import time\ntime.sleep(120)", WRITE])
    messages = []
    result = run_notebook(book, tmp_path / "out", quick=True, hang_after_s=3, limit_s=60, echo=messages.append)
    assert result.status == "hung" and result.attempts == 2
    assert "stopped answering in cell" in result.error and "no CPU used for 3 s" in result.error
    assert result.seconds < 40  # detected after seconds, not after the cell's 120 s
    assert len(messages) == 1 and "running it again" in messages[0]


@pytest.mark.slow
def test_a_kernel_that_dies_once_is_retried_and_then_passes(tmp_path):
    from mtilib.course import run_notebook

    marker = tmp_path / "died-once"
    kill_once = (f"import os, pathlib, signal\nmarker = pathlib.Path({str(marker)!r})\n"
                 "if not marker.exists():\n    marker.touch()\n    os.kill(os.getpid(), signal.SIGKILL)")
    book = _book(tmp_path / "01_dies_once.ipynb", [kill_once, WRITE])
    result = run_notebook(book, tmp_path / "out", quick=True, hang_after_s=30, limit_s=120)
    assert result.status == "ok" and result.attempts == 2, result.error
    assert result.metrics == {"done": True}
    assert "(retried)" in summary_table([result])

    always = _book(tmp_path / "02_dies.ipynb", ["import os, signal\nos.kill(os.getpid(), signal.SIGKILL)", WRITE])
    result = run_notebook(always, tmp_path / "out", quick=True, hang_after_s=30, limit_s=120)
    assert result.status == "hung" and result.attempts == 2
    assert "kernel died" in result.error


@pytest.mark.slow
def test_a_raising_cell_is_not_retried_and_a_busy_notebook_meets_its_wall_clock_limit(tmp_path):
    from mtilib.course import run_notebook

    raising = _book(tmp_path / "01_raises.ipynb", ["raise RuntimeError('wrong answer')", WRITE])
    result = run_notebook(raising, tmp_path / "out", quick=True, hang_after_s=30, limit_s=120)
    assert result.status == "failed" and result.attempts == 1 and "wrong answer" in result.error

    busy = _book(tmp_path / "02_busy.ipynb", ["while True:\n    sum(range(10_000))", WRITE])
    result = run_notebook(busy, tmp_path / "out", quick=True, hang_after_s=30, limit_s=8)
    assert result.status == "timeout" and result.attempts == 1
    assert "wall-clock limit of 8 s" in result.error and "still computing" in result.error
    assert result.seconds < 30


@pytest.mark.slow
def test_the_summary_marks_notebooks_over_their_budget(tmp_path):
    books = tmp_path / "notebooks"
    books.mkdir()
    # perf_counter, like the runner: the wall clock (time.time) can be stepped while the loop runs
    _book(books / "01_slow.ipynb", ["import time\nt = time.perf_counter()\nwhile time.perf_counter() - t < 4: pass",
                                    WRITE],
          budget_s=3)  # kernel start + 4 s > 3 s budget, < 5 x 3 s limit
    _book(books / "02_fast.ipynb", [WRITE], budget_s=100)
    messages = []
    results = run_course(quick=True, out=tmp_path / "out", notebook_dir=books, echo=messages.append,
                         limit_factor=30)  # a loaded machine may start kernels slowly: no timeout here
    slow, fast = results
    assert slow.status == fast.status == "ok"
    assert slow.over_budget and not fast.over_budget
    assert slow.budget_s == 3 and fast.budget_s == 100
    table = summary_table(results)
    assert "3 OVER" in table and "100 OVER" not in table and "1 over" in table
    assert any("OVER" in m and "01_slow" in m for m in messages)


def test_idle_clock_sums_cpu_over_polls():
    """A kernel that gets only a little CPU per poll (a contended machine) is working, not hung:
    with a 180 s hang limit the threshold is 1.8 CPU seconds, which no single 0.5 s poll on 2 cores
    can show; summed over polls it is reached. A kernel that uses (almost) nothing is idle."""
    from mtilib.course import IdleClock

    slow = IdleClock(threshold_s=1.8, start=0.0)
    for k in range(1, 1201):  # 600 s of polls, 0.1 CPU second each (a fifth of one core)
        idle_since = slow.update(k * 0.5, 0.1)
    assert 600.0 - idle_since < 10.0

    stalled = IdleClock(threshold_s=1.8, start=0.0)
    for k in range(1, 1201):  # 0.001 CPU second per poll: 0.6 s in 10 minutes
        idle_since = stalled.update(k * 0.5, 0.001)
    assert idle_since == 0.0


@pytest.mark.slow
def test_two_notebooks_at_a_time_share_the_cores_and_keep_their_order(tmp_path):
    """``jobs=2``: the notebooks overlap in time, each kernel gets half the cores as threads, and the
    results come back in notebook order."""
    import os

    books = tmp_path / "notebooks"
    books.mkdir()
    body = ("import os, time\nfrom mtilib.course import write_metrics\nstart = time.time()\n"
            "time.sleep({sleep})\n"
            "write_metrics(OUT_DIR, start=start, end=time.time(), threads=os.environ.get('OMP_NUM_THREADS'))")
    _write(books / "01_slow.ipynb", [_params_cell(), new_code_cell(body.format(sleep=6))])
    _write(books / "02_fast.ipynb", [_params_cell(), new_code_cell(body.format(sleep=0))])
    results = run_course(quick=True, out=tmp_path / "out", notebook_dir=books, echo=lambda *a: None, jobs=2)
    slow, fast = results
    assert [r.notebook for r in results] == ["01_slow.ipynb", "02_fast.ipynb"]
    assert slow.status == fast.status == "ok"
    assert fast.metrics["start"] < slow.metrics["end"], "the second notebook waited for the first"
    assert slow.metrics["threads"] == fast.metrics["threads"] == str(max(1, (os.cpu_count() or 1) // 2))
