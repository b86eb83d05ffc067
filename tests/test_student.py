"""Student copies: no solutions, no instructor notes, and they run up to the first exercise."""

import nbformat
import papermill as pm
import pytest
from papermill.exceptions import PapermillExecutionError

from mtilib.course import DEFAULT_DATA, NOTEBOOK_DIR, ensure_kernel
from mtilib.student import make_student_copies


def test_student_copies_have_no_solutions(tmp_path):
    written = make_student_copies(tmp_path)
    originals = sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))
    assert [p.name for p in written] == [p.name for p in originals]
    for path in written:
        nb = nbformat.read(path, as_version=4)
        tags = [t for c in nb.cells for t in c.metadata.get("tags", [])]
        assert "solution" not in tags and "instructor" not in tags, path.name
        assert "exercise" in tags and "check" in tags and "parameters" in tags, path.name


@pytest.mark.notebook
def test_student_copy_runs_up_to_the_first_exercise(tmp_path):
    """The welcome notebook's student copy executes every cell before the first exercise check and
    fails (as it should: the exercise is not done) no earlier than that check."""
    path = make_student_copies(tmp_path / "student")[0]
    nb = nbformat.read(path, as_version=4)
    first_exercise = next(i for i, c in enumerate(nb.cells) if "exercise" in c.metadata.get("tags", []))
    with pytest.raises(PapermillExecutionError) as info:
        pm.execute_notebook(
            str(path), str(tmp_path / "executed.ipynb"), kernel_name=ensure_kernel(), cwd=str(NOTEBOOK_DIR),
            parameters={"QUICK": True, "DATA_DIR": str(DEFAULT_DATA), "OUT_DIR": str(tmp_path / "out")},
            progress_bar=False,
        )
    # papermill inserts one injected-parameters cell after the parameters cell
    assert info.value.cell_index > first_exercise
