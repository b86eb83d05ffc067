"""The offline course site (``mtilib site``), built from a two-notebook toy course so that it runs in
seconds: every page exists, figures are in the pages, links resolve, nothing is fetched from the
network, solutions are collapsed and instructor notes hidden, and a fresh run of the same commit is
reused. ``make site`` on the real course is the same code on twelve notebooks."""

import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HEADER = """# {n} · Toy notebook {n}

**Time:** about 10 minutes (6 teaching, 4 exercises) · **Needs:** nothing

**Objectives.** After this notebook you can
1. draw a figure;
2. collapse a solution."""


def _toy_course(folder: Path) -> Path:
    import nbformat

    folder.mkdir()
    for n in ("01", "02"):
        params = new_code_cell('QUICK = False\nSEED = 0\nDEVICE = "auto"\nDATA_DIR = "."\nOUT_DIR = "."')
        params.metadata["tags"] = ["parameters"]
        solution = new_code_cell("answer = 42  # the solution")
        solution.metadata["tags"] = ["solution"]
        notes = new_markdown_cell("**Instructor notes.** Say this slowly.")
        notes.metadata["tags"] = ["instructor"]
        plumbing = new_code_cell("from mtilib.course import write_metrics\nwrite_metrics(OUT_DIR, ok=True)")
        plumbing.metadata["tags"] = ["metrics"]
        cells = [new_markdown_cell(HEADER.format(n=n)), params,
                 new_code_cell("import matplotlib.pyplot as plt\nfig, ax = plt.subplots()\nax.plot([0, 1], [1, 0])"),
                 solution, notes, plumbing]
        nb = new_notebook(cells=cells, metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                                "language": "python"}})
        nbformat.write(nb, folder / f"{n}_toy.ipynb")
    return folder


class _Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.refs, self.images = [], 0

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.images += 1
        for key in ("href", "src"):
            if attrs.get(key):
                self.refs.append((tag, attrs[key]))


@pytest.mark.slow
def test_site_pages_figures_links_and_offline(tmp_path, monkeypatch):
    import mtilib.course
    import mtilib.site
    from mtilib.site import build_site

    # a clean checkout of one commit, whatever the state of the tree the tests run in
    clean = {"commit": "abc1234", "dirty": False}
    monkeypatch.setattr(mtilib.course, "repo_state", lambda *a: dict(clean))
    monkeypatch.setattr(mtilib.site, "repo_state", lambda *a: dict(clean))

    books = _toy_course(tmp_path / "notebooks")
    docs = tmp_path / "docs"
    (docs / "figures").mkdir(parents=True)
    (docs / "results.md").write_text("# Results\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\n"
                                     "See [benchmarks](benchmarks.md).\n")
    (docs / "benchmarks.md").write_text("# Benchmarks\n\n![curve](figures/curve.png)\n")
    (docs / "figures" / "curve.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    messages = []
    site = build_site(out=tmp_path / "site", course_out=tmp_path / "course", quick=True, notebook_dir=books,
                      docs_dir=docs, echo=messages.append)
    pages = {p.name for p in site.glob("*.html")}
    assert pages == {"index.html", "01_toy.html", "02_toy.html", "results.html", "benchmarks.html"}
    for name in pages:
        html = (site / name).read_text()
        parser = _Links()
        parser.feed(html)
        for tag, ref in parser.refs:
            assert not re.match(r"(https?:)?//", ref), f"{name}: {tag} loads {ref} from the network"
            if ref.startswith(("data:", "#", "mailto:")):
                continue
            assert (site / ref.split("#")[0]).exists(), f"{name}: link {ref} does not resolve"
        if name.endswith("_toy.html"):
            assert parser.images >= 1, f"{name}: the notebook draws a figure, the page shows none"
            assert re.search(r'<details class="site-solution">.*?answer.*?42.*?</details>', html, re.S)
            assert re.search(r'<details class="site-instructor">.*?Say this slowly.*?</details>', html, re.S)
            assert "write_metrics" not in html  # the course's plumbing stays out
            assert "mtilib course --quick" in html and "built from commit" in html
    index = (site / "index.html").read_text()
    assert "Toy notebook 01" in index and "draw a figure; collapse a solution" in index
    assert "10 min (6 + 4)" in index and 'href="results.html"' in index
    assert (site / "figures" / "curve.png").exists() and (site / "assets" / "mtinet.png").stat().st_size > 1000
    assert any("executing the course" in m for m in messages)

    assert "abc1234" in index

    # the same commit's run is reused: no second execution; another commit runs the course again
    messages.clear()
    build_site(out=tmp_path / "site", course_out=tmp_path / "course", quick=True, notebook_dir=books,
               docs_dir=docs, echo=messages.append)
    assert any("reusing the course run of commit abc1234" in m for m in messages)
    assert not any("executing the course" in m for m in messages)
    # another commit, a dirty tree or the other mode: the run is not reused
    assert mtilib.site.reusable_run(tmp_path / "course", True, books) is not None
    assert mtilib.site.reusable_run(tmp_path / "course", False, books) is None
    clean["dirty"] = True
    assert mtilib.site.reusable_run(tmp_path / "course", True, books) is None
    clean.update(commit="def5678", dirty=False)
    assert mtilib.site.reusable_run(tmp_path / "course", True, books) is None


def test_site_refuses_a_folder_it_did_not_build(tmp_path):
    from mtilib.site import build_site

    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("keep me")
    with pytest.raises(FileExistsError, match="not a site this command built"):
        build_site(out=out, course_out=tmp_path / "course", notebook_dir=tmp_path / "none")
    assert (out / "thesis.tex").read_text() == "keep me"
