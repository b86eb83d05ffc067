"""Student copies of the notebooks: solutions and instructor notes removed, outputs cleared.

``mtilib student --out build/student`` (``make student``). Exercise cells stay as the student's
starting point and check cells stay so that the student knows when an answer is right.
"""

from __future__ import annotations

from pathlib import Path

import nbformat

from mtilib.course import NOTEBOOK_DIR, discover

REMOVED_TAGS = ("solution", "instructor")


def student_notebook(nb):
    """A copy of ``nb`` without cells tagged ``solution`` or ``instructor`` and without outputs."""
    copy = nbformat.from_dict(nb)
    copy.cells = [c for c in copy.cells if not set(c.metadata.get("tags", [])) & set(REMOVED_TAGS)]
    for cell in copy.cells:
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
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
