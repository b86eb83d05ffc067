"""The course runner: parameters injected, failures named with notebook and cell, summary table."""

import nbformat
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
    assert "torch" in out and "device:" in out and "bf16_helps" in out
