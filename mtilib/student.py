"""Student copies of the notebooks, and the rehearsal that proves they work.

``mtilib student --out build/student`` (``make student``) writes the student copies: solutions,
instructor notes and the course's metrics plumbing (cells tagged ``metrics``) removed, outputs
cleared. Exercise cells stay as the student's starting point and check cells stay so that the
student knows when an answer is right.

:func:`rehearsal_notebook` builds, from a course notebook, what a student working through its
copy would run, twice over: every cell of the student copy in order and, at each exercise, its
check run first against the blank answer (it must refuse it with an ``AssertionError`` of its
own, never a ``NameError`` or another error) and then, with the solution pasted back, again (it
must pass). The notebook tests execute these rehearsals instead of the bare notebooks, so every
check of every student copy is exercised both ways on every run of ``make test``.
"""

from __future__ import annotations

import json
from pathlib import Path

import nbformat

from mtilib.course import NOTEBOOK_DIR, discover

REMOVED_TAGS = ("solution", "instructor", "metrics")

#: Tag of the cells a rehearsal inserts (blank-answer checks and the final record).
REHEARSAL_TAG = "rehearsal"

#: File the rehearsal writes into the notebook's OUT_DIR: each check's answer to a blank exercise.
REHEARSAL_RECORD = "rehearsal.json"


def _tags(cell) -> set[str]:
    return set(cell.metadata.get("tags", []))


def _clear_outputs(cells) -> None:
    """Empty the outputs and execution counts of the code cells, in place."""
    for cell in cells:
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None


def student_notebook(nb):
    """A copy of ``nb`` without cells tagged ``solution``, ``instructor`` or ``metrics`` and
    without outputs."""
    copy = nbformat.from_dict(nb)
    copy.cells = [c for c in copy.cells if not _tags(c) & set(REMOVED_TAGS)]
    _clear_outputs(copy.cells)
    return copy


def make_student_copies(out_dir: str | Path, notebook_dir: str | Path = NOTEBOOK_DIR) -> list[Path]:
    """Write student copies of every numbered notebook to ``out_dir``; return their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for path in discover(Path(notebook_dir)):
        nb = nbformat.read(path, as_version=4)
        target = out / path.name
        nbformat.write(student_notebook(nb), target)
        written.append(target)
    return written


def exercises(nb) -> list[dict]:
    """The exercises of a course notebook: per exercise the indices of its ``exercise``,
    ``solution`` and ``check`` cells (in that order, as every course notebook lays them out) and
    its title (the heading of the markdown cell before it)."""
    cells = nb.cells
    found = []
    for i, cell in enumerate(cells):
        if "exercise" not in _tags(cell):
            continue
        solution = next((j for j in range(i + 1, len(cells)) if "solution" in _tags(cells[j])), None)
        check = next((j for j in range(i + 1, len(cells)) if "check" in _tags(cells[j])), None)
        following = next((j for j in range(i + 1, len(cells)) if "exercise" in _tags(cells[j])), len(cells))
        if solution is None or check is None or not i < solution < check < following:
            raise ValueError(f"exercise cell {i}: expected its solution cell and then its check cell before the "
                             "next exercise")
        headings = ([line.lstrip("# ").strip() for line in cells[j].source.splitlines() if line.startswith("#")]
                    for j in range(i - 1, -1, -1) if cells[j].cell_type == "markdown")
        heading = next((h[-1] for h in headings if h), f"exercise {len(found) + 1}")  # the nearest heading above
        found.append({"exercise": i, "solution": solution, "check": check, "title": heading})
    return found


def rehearsal_notebook(nb):
    """The student copy of ``nb`` worked through twice over (see the module docstring), with the
    metrics cells kept so that the run still reports the notebook's teaching checks."""
    found = exercises(nb)
    blank_checks = {e["check"]: e for e in found}
    rehearsal = nbformat.from_dict(nb)
    cells = []
    for i, cell in enumerate(nb.cells):
        tags = _tags(cell)
        if "instructor" in tags:
            continue
        if i in blank_checks:
            title = blank_checks[i]["title"]
            cells.append(nbformat.v4.new_code_cell(
                "from mtilib.student import expect_blank_refused\n"
                f"expect_blank_refused({cell.source!r}, globals(), {title!r})",
                metadata={"tags": [REHEARSAL_TAG]}))
            # the solution, pasted back, comes next: move it after the blank check
            cells.append(nbformat.from_dict(nb.cells[blank_checks[i]["solution"]]))
        if "solution" in tags:
            continue  # placed after its blank check
        cells.append(nbformat.from_dict(cell))
    cells.append(nbformat.v4.new_code_cell(
        "from mtilib.student import write_rehearsal_record\nwrite_rehearsal_record(OUT_DIR, globals())",
        metadata={"tags": [REHEARSAL_TAG]}))
    _clear_outputs(cells)
    rehearsal.cells = cells
    return rehearsal


class RehearsalError(RuntimeError):
    """A check that let a blank answer through, or refused it with something else than its own
    ``AssertionError``."""


def expect_blank_refused(check_source: str, namespace: dict, title: str) -> str:
    """Run a check cell's source in ``namespace`` (the notebook's) while the exercise is still
    blank: it must raise an ``AssertionError`` with a message; that message is recorded in
    ``namespace["_rehearsal"]`` and returned."""
    record = namespace.setdefault("_rehearsal", [])
    try:
        exec(compile(check_source, f"<check of {title}>", "exec"), namespace)
    except AssertionError as exc:
        message = str(exc).strip()
        if not message:
            raise RehearsalError(f"{title}: the check refuses a blank answer without saying why") from exc
        record.append({"exercise": title, "message": message})
        print(f"{title}, blank answer refused: {message}")
        return message
    except Exception as exc:
        raise RehearsalError(f"{title}: with the blank answer the check raised {type(exc).__name__}: {exc} "
                             "instead of saying what is missing") from exc
    raise RehearsalError(f"{title}: the check passed the blank answer")


def write_rehearsal_record(out_dir: str | Path, namespace: dict) -> Path:
    """Write the blank-answer messages the rehearsal collected to ``out_dir/rehearsal.json``."""
    path = Path(out_dir) / REHEARSAL_RECORD
    path.write_text(json.dumps(namespace.get("_rehearsal", []), indent=1, ensure_ascii=False))
    return path
