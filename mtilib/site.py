"""The executed course as an offline static website (``make site`` / ``mtilib site``; DESIGN, "The
course site").

Pages are rendered by nbconvert's ``HTMLExporter`` with one template of ours
(``site_templates/course``, extending nbconvert's JupyterLab template) and the index and documents
with one Jinja page template (``site_templates/page.html.j2``); no HTML is built in code. Figures
are embedded in the pages (nbconvert writes them as data URIs), styles are a local file, and no
page loads anything from the network.

The course is executed by :func:`mtilib.course.run_course` unless ``course_out`` already holds a run
of the same commit on a clean checkout in the same mode (its ``course_run.json``): ``make course``
followed by ``make site`` executes the notebooks once.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path

from mtilib.course import DEFAULT_OUT, NOTEBOOK_DIR, REPO_ROOT, default_jobs, discover, repo_state, run_course

TEMPLATES = Path(__file__).with_name("site_templates")
DEFAULT_SITE = REPO_ROOT / "build" / "site"
#: Documents of docs/ that the site renders as pages, with their titles.
DOCUMENTS = {"results.md": "Results table", "benchmarks.md": "Benchmarks"}
#: A file the builder leaves in its output: a folder holding it may be replaced without --force.
MARKER = ".mtilib-site"


def reusable_run(course_out: Path, quick: bool, notebook_dir: Path) -> dict | None:
    """The ``course_run.json`` of ``course_out`` when it was executed from this very commit (clean
    checkout), in the same mode and from the same notebooks; else ``None``."""
    path = Path(course_out) / "course_run.json"
    if not path.exists() or not (Path(course_out) / "summary.json").exists():
        return None
    run = json.loads(path.read_text())
    here = repo_state()
    same = (run.get("commit") is not None and run.get("commit") == here["commit"] and not run.get("dirty")
            and not here["dirty"] and run.get("quick") == quick
            and run.get("notebook_dir") == str(Path(notebook_dir).resolve())
            and run.get("notebooks") == [p.name for p in discover(Path(notebook_dir))])
    return run if same else None


def notebook_card(path: Path) -> dict:
    """Title, objectives and time of a course notebook, read from its header cell."""
    import nbformat

    header = nbformat.read(path, as_version=4).cells[0].source
    title = header.splitlines()[0].lstrip("# ").strip() if header.strip() else path.stem
    match = re.search(r"\*\*Time:\*\* about (\d+) minutes \((\d+) teaching, (\d+) exercises\)", header)
    time_text = f"{match.group(1)} min ({match.group(2)} + {match.group(3)})" if match else ""
    objectives = re.findall(r"^\d+\. (.+(?:\n {3}.+)*)", header, flags=re.M)
    return {"title": title, "time": time_text,
            "objectives": "; ".join(" ".join(o.split()).rstrip(";.") for o in objectives)}


def build_site(out: str | Path = DEFAULT_SITE, course_out: str | Path = DEFAULT_OUT, quick: bool = False,
               notebook_dir: str | Path = NOTEBOOK_DIR, docs_dir: str | Path = REPO_ROOT / "docs",
               force: bool = False, echo=print) -> Path:
    """Execute the course (or reuse a run of this commit), render every executed notebook, the
    documents and an index into ``out``; returns ``out``. A non-empty ``out`` that this builder
    did not write is refused without ``force``, before anything runs."""
    from nbconvert import HTMLExporter

    out, course_out, notebook_dir, docs_dir = Path(out), Path(course_out), Path(notebook_dir), Path(docs_dir)
    if out.exists() and any(out.iterdir()) and not (out / MARKER).exists() and not force:
        raise FileExistsError(f"{out}: not empty and not a site this command built; pass --force to replace it")
    run = reusable_run(course_out, quick, notebook_dir)
    if run is None:
        echo(f"[site] executing the course into {course_out} ...")
        run_course(quick=quick, out=course_out, notebook_dir=notebook_dir, echo=echo,
                   jobs=default_jobs())  # as mtilib course runs it
        run = json.loads((course_out / "course_run.json").read_text())
    else:
        echo(f"[site] reusing the course run of commit {run['commit']} in {course_out}")
    summary = {row["notebook"]: row for row in json.loads((course_out / "summary.json").read_text())}
    commit = run.get("commit") or "unknown"
    if run.get("dirty"):
        commit += " (with uncommitted changes)"
    date = time.strftime("%Y-%m-%d %H:%M")
    command = "mtilib course" + (" --quick" if quick else "")

    if out.exists():
        shutil.rmtree(out)
    (out / "assets").mkdir(parents=True)
    shutil.copy(TEMPLATES / "site.css", out / "assets" / "site.css")
    _draw_diagram(out / "assets" / "mtinet.png")

    books = [p for p in discover(notebook_dir) if (course_out / p.name).exists()]
    cards = []
    for path in books:
        row = summary.get(path.name, {})
        cards.append({**notebook_card(path), "page": path.stem + ".html", "seconds": f"{row.get('seconds', 0):.0f}",
                      "status": row.get("status", "not run")})
    exporter = HTMLExporter(template_name="course", extra_template_basedirs=[str(TEMPLATES)])
    for i, (path, card) in enumerate(zip(books, cards)):
        site = {"previous": cards[i - 1] if i else None, "next": cards[i + 1] if i + 1 < len(cards) else None,
                "command": command, "seconds": card["seconds"], "status": card["status"], "commit": commit,
                "date": date}
        html, _ = exporter.from_filename(str(course_out / path.name),
                                         resources={"site": site, "metadata": {"name": card["title"]}})
        (out / card["page"]).write_text(html, encoding="utf-8")
    echo(f"[site] {len(cards)} notebook pages")

    page = _page_template()
    links = []
    for name, title in DOCUMENTS.items():
        source = docs_dir / name
        if source.exists():
            body = _markdown_page(source, out)
            target = Path(name).with_suffix(".html").name
            links.append({"page": target, "title": title})
            (out / target).write_text(page.render(title=title, body=body, links=[], commit=commit, date=date),
                                      encoding="utf-8")
    n_ok = sum(c["status"] == "ok" for c in cards)
    total = sum(float(summary.get(p.name, {}).get("seconds", 0)) for p in books) / 60
    (out / "index.html").write_text(page.render(
        title="MTI-Net for liver tumour DCE-MRI: the course", notebooks=cards, links=links, commit=commit,
        date=date, command=command, n_ok=n_ok, total_minutes=f"{total:.1f}"), encoding="utf-8")
    (out / MARKER).write_text(json.dumps({"commit": commit, "date": date}))
    echo(f"[site] {out / 'index.html'}: open it in a browser, or run python -m http.server -d {out}")
    return out


def _page_template():
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), autoescape=False)
    return env.get_template("page.html.j2")


def _markdown_page(source: Path, out: Path) -> str:
    """A document of docs/ as HTML (nbconvert's Markdown renderer): links to other rendered
    documents point at their pages, local images are copied beside the site's pages."""
    from nbconvert.filters.markdown_mistune import markdown2html_mistune

    text = source.read_text(encoding="utf-8")
    for name in DOCUMENTS:
        text = text.replace(f"]({name})", f"]({Path(name).with_suffix('.html').name})")
    for target in re.findall(r"!\[[^\]]*\]\(([^)\s]+)\)", text):
        image = (source.parent / target).resolve()
        if image.is_file() and "://" not in target:
            destination = out / target
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(image, destination)
    return markdown2html_mistune(text)


def _draw_diagram(path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mtilib.viz import draw_mtinet

    fig = draw_mtinet(title="MTI-Net")
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
