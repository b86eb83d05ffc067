"""Student copies: no solutions, no instructor notes, no metrics plumbing, no answer left in a
check; and the rehearsal that tests/test_notebooks.py executes is exactly the student copy worked
through twice over. (The execution itself, blank and solved, is in tests/test_notebooks.py.)"""

import ast

import nbformat
import pytest

from mtilib.course import NOTEBOOK_DIR
from mtilib.student import (
    REHEARSAL_TAG,
    RehearsalError,
    exercises,
    expect_blank_refused,
    make_student_copies,
    rehearsal_notebook,
    student_notebook,
)

NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))


def test_student_copies_have_no_solutions(tmp_path):
    written = make_student_copies(tmp_path)
    assert [p.name for p in written] == [p.name for p in NOTEBOOKS]
    for path in written:
        nb = nbformat.read(path, as_version=4)
        tags = [t for c in nb.cells for t in c.metadata.get("tags", [])]
        assert not {"solution", "instructor", "metrics"} & set(tags), path.name
        assert "exercise" in tags and "check" in tags and "parameters" in tags, path.name
        assert not any("write_metrics" in c.source for c in nb.cells), f"{path.name}: metrics plumbing left in"


def _statements(source: str) -> set[str]:
    """The statements of a cell's code, each unparsed on one line (comments and layout dropped),
    without docstrings and `...` placeholders."""
    out = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.stmt) and not isinstance(node, (ast.FunctionDef, ast.If, ast.For, ast.With)):
            if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
                continue  # a docstring or a bare `...`
            out.add(ast.unparse(node))
    return out


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_no_check_or_other_cell_gives_the_solution_away(path):
    """A statement of a solution that the exercise cell does not already hold appears nowhere in the
    student copy (notebook 07 once kept its solution, verbatim, as the check's reference)."""
    nb = nbformat.read(path, as_version=4)
    student_sources = [c.source for c in student_notebook(nb).cells if c.cell_type == "code"]
    for e in exercises(nb):
        given = _statements(nb.cells[e["exercise"]].source)
        answer = _statements(nb.cells[e["solution"]].source) - given
        answer = {s for s in answer if len(s) > 25 and not s.startswith(("import ", "from "))}
        leaked = {s for s in answer for src in student_sources if s in _statements(src)}
        assert not leaked, f"{path.name} {e['title']}: the student copy holds the solution's {sorted(leaked)}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_rehearsal_is_the_student_copy_with_solutions_pasted_back(path):
    nb = nbformat.read(path, as_version=4)
    rehearsal = rehearsal_notebook(nb)
    student = student_notebook(nb)
    found = exercises(nb)
    inserted = [c for c in rehearsal.cells if REHEARSAL_TAG in c.metadata.get("tags", [])]
    assert len(inserted) == len(found) + 1  # one blank check per exercise, and the record at the end
    kept = [c.source for c in rehearsal.cells
            if not {REHEARSAL_TAG, "solution", "metrics"} & set(c.metadata.get("tags", []))]
    assert kept == [c.source for c in student.cells]
    sources = [c.source for c in rehearsal.cells]
    for e in found:  # blank check, then the solution, then the check, after the exercise
        check = nb.cells[e["check"]].source
        at = sources.index(check)
        assert sources[at - 1] == nb.cells[e["solution"]].source
        assert repr(check) in sources[at - 2] and sources.index(nb.cells[e["exercise"]].source) < at - 2


def test_blank_check_must_refuse_with_its_own_assertion():
    namespace = {"answer": ...}
    message = expect_blank_refused("assert answer is not ..., 'fill in answer'", namespace, "Exercise 1")
    assert message == "fill in answer" and namespace["_rehearsal"] == [{"exercise": "Exercise 1",
                                                                        "message": "fill in answer"}]
    with pytest.raises(RehearsalError, match="NameError"):
        expect_blank_refused("assert count(answer) > 0, 'no'", namespace, "Exercise 2")
    with pytest.raises(RehearsalError, match="passed the blank answer"):
        expect_blank_refused("x = 1", namespace, "Exercise 3")
    with pytest.raises(RehearsalError, match="without saying why"):
        expect_blank_refused("assert answer is not ...", namespace, "Exercise 4")


def test_every_notebook_ends_with_a_questionnaire_and_the_glossary_has_the_terms():
    from mtilib.course import NOTEBOOK_DIR as notebooks

    for path in NOTEBOOKS:
        cells = nbformat.read(path, as_version=4).cells
        quiz = [c.source for c in cells if c.cell_type == "markdown" and c.source.startswith("## Questionnaire")]
        assert len(quiz) == 1 and quiz[0].count("\n1. ") == 1 and "\n3. " in quiz[0], path.name
    glossary = (notebooks.parent / "docs" / "GLOSSARY.md").read_text()
    for term in ("SPGR", "kep", "FiLM", "HD95", "LSGAN", "MdIEF", "TIM", "TDD", "RAS+", "Dice"):
        assert f"| **{term}" in glossary, term


def _header_minutes(path) -> tuple[int, int]:
    """(teaching, exercise) minutes from a notebook's header line."""
    import re

    first = nbformat.read(path, as_version=4).cells[0].source
    match = re.search(r"\*\*Time:\*\* about (\d+) minutes \((\d+) teaching, (\d+) exercises\)", first)
    assert match, f"{path.name}: the header should say its teaching and exercise minutes apart"
    total, teaching, exercises_ = map(int, match.groups())
    assert total == teaching + exercises_, path.name
    return teaching, exercises_


def test_the_workshop_plans_add_up_and_match_the_notebooks():
    import re

    from mtilib.course import NOTEBOOK_DIR as notebooks

    minutes = {p.name[:2]: _header_minutes(p) for p in NOTEBOOKS}
    guide = (notebooks.parent / "docs" / "INSTRUCTOR.md").read_text()
    one_day = guide[guide.index("## One-day workshop"):guide.index("## Two-day workshop")]
    title_minutes = re.search(r"\((\d+) h (\d+) min of teaching", one_day)
    rows = re.findall(r"\| (\d\d):(\d\d)–(\d\d):(\d\d) \| (\d\d) [^|]*\| (\d+) \| ([^|]*) \|", one_day)
    assert len(rows) == 11
    total = 0
    for h0, m0, h1, m1, number, slot, _how in rows:
        slot = int(slot)
        assert (int(h1) * 60 + int(m1)) - (int(h0) * 60 + int(m0)) == slot, number  # the clock agrees
        teaching, exercises_ = minutes[number]
        assert teaching <= slot <= teaching + exercises_, f"{number}: {slot} min vs {teaching} + {exercises_}"
        total += slot
    assert total == int(title_minutes.group(1)) * 60 + int(title_minutes.group(2))
    two_day = guide[guide.index("## Two-day workshop"):]
    for day, numbers in (("Day 1", ["00", "01", "02", "03", "04", "05"]),
                          ("Day 2", ["06", "07", "08", "09", "10", "11"])):
        stated = int(re.search(rf"{day} \((\d+) minutes\)", two_day).group(1))
        assert stated == sum(sum(minutes[n]) for n in numbers), day
