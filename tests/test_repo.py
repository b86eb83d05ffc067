"""Repository hygiene: notebooks stripped and parameterised, lint clean, environments agree,
layers respected. Each failure names the file it is about."""

import ast
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
import yaml
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
PARAMETERS = ("QUICK", "SEED", "DEVICE", "DATA_DIR", "OUT_DIR")


def test_there_are_notebooks():
    assert NOTEBOOKS, "no numbered notebooks in notebooks/"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_committed_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    dirty = [i for i, c in enumerate(nb.cells)
             if c.cell_type == "code" and (c.get("outputs") or c.get("execution_count") is not None)]
    assert not dirty, (
        f"{path.name}: cells {dirty} carry outputs or execution counts; strip them with "
        f"`.venv/bin/nbstripout {path.relative_to(ROOT)}`"
    )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_has_parameters_cell(path):
    nb = nbformat.read(path, as_version=4)
    cells = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(cells) == 1, f"{path.name}: needs exactly one cell tagged 'parameters', found {len(cells)}"
    names = {t.id for node in ast.walk(ast.parse(cells[0].source)) if isinstance(node, ast.Assign)
             for t in node.targets if isinstance(t, ast.Name)}
    missing = [p for p in PARAMETERS if p not in names]
    assert not missing, f"{path.name}: parameters cell does not define {missing}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_structure(path):
    """Title, objectives, key points; every exercise followed by its solution and a check."""
    nb = nbformat.read(path, as_version=4)
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# "), f"{path.name}: no title"
    text = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    for heading in ("Objectives", "Key points", "Time:"):
        assert heading in text, f"{path.name}: no '{heading}'"
    tags = [c.metadata.get("tags", []) for c in nb.cells]
    exercises = [i for i, t in enumerate(tags) if "exercise" in t]
    for i in exercises:
        following = [t for t in tags[i + 1:i + 4]]
        assert following and "solution" in following[0], f"{path.name}: exercise cell {i} not followed by a solution"
        assert any("check" in t for t in following[1:]), f"{path.name}: exercise cell {i} has no check cell"
    assert any("instructor" in t for t in tags), f"{path.name}: no cell tagged 'instructor'"


def test_ruff_lint_package_tests_notebooks():
    result = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "mtilib", "tests", "notebooks", "scripts"],
        cwd=ROOT, capture_output=True, text=True,
    )
    assert result.returncode == 0, "ruff found problems:\n" + result.stdout + result.stderr


def _constraints() -> dict[str, Version]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, version = line.split("==")
            pins[re.sub(r"[-_.]+", "-", name).lower()] = Version(version)
    return pins


def test_constraints_pin_torch_and_satisfy_pyproject():
    import tomllib

    pins = _constraints()
    assert pins.get("torch") == Version("2.13.0"), "constraints.txt must pin torch==2.13.0"
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        requirements += extra
    for text in requirements:
        req = Requirement(text)
        assert not any(s.operator == "==" for s in req.specifier), f"pyproject.toml pins {text}: lower bounds only"
        name = re.sub(r"[-_.]+", "-", req.name).lower()
        assert name in pins, f"constraints.txt has no pin for {req.name} (pyproject.toml)"
        assert pins[name] in req.specifier, f"constraints.txt pins {name}=={pins[name]}, outside {text}"


def test_environment_yml_installs_the_same_things_as_make_setup():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    deps = env["dependencies"]
    assert any(str(d).startswith("python") for d in deps) and "pip" in deps
    pip_section = next(d["pip"] for d in deps if isinstance(d, dict))
    makefile = (ROOT / "Makefile").read_text()
    install = re.search(r"pip install[^\n]*\\\n\s*(.*)", makefile).group(1)
    assert "torch==2.13.0" in pip_section and "torch==2.13.0" in install
    assert "-c constraints.txt" in pip_section and "-c constraints.txt" in install
    extras = re.search(r"\.\[([\w,]+)\]", install).group(1)
    assert f"-e .[{extras}]" in pip_section, f"environment.yml should install -e .[{extras}] like the Makefile"
    import tomllib

    declared = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"])
    assert set(extras.split(",")) == declared, "make setup must install every extra of pyproject.toml"


def _layer_of(module: str) -> int | None:
    from mtilib.diagrams import layer_of

    return layer_of(module)


def test_lower_layers_never_import_higher_ones():
    problems = []
    for path in sorted((ROOT / "mtilib").rglob("*.py")):
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        own = _layer_of(module)
        if own is None:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            for target in targets:
                layer = _layer_of(target)
                if layer is not None and layer > own:
                    problems.append(f"{path.relative_to(ROOT)} imports {target}")
    assert not problems, "layer violations:\n" + "\n".join(problems)


def test_every_module_belongs_to_a_layer():
    from mtilib.diagrams import layer_of, module_name

    orphans = [module_name(p) for p in (ROOT / "mtilib").rglob("*.py")
               if module_name(p) != "mtilib" and layer_of(module_name(p)) is None]
    assert not orphans, f"add these modules to mtilib.diagrams.LAYERS: {orphans}"


def test_design_diagrams_are_what_the_code_generates():
    from mtilib.diagrams import BEGIN, END, generated_section

    text = (ROOT / "docs" / "DESIGN.md").read_text()
    committed = text[text.index(BEGIN):text.index(END) + len(END)]
    assert committed == generated_section(), "run: python scripts/design_diagrams.py"


def test_design_sections_cited_by_the_code_exist_and_nothing_cites_an_outside_spec():
    design = (ROOT / "docs" / "DESIGN.md").read_text()
    sections = set(re.findall(r"^## (\d+) ·", design, re.M)) | set(re.findall(r"\*\*(\d+\.\d+) ", design))
    problems = []
    files = [*(ROOT / "mtilib").rglob("*.py"), *(ROOT / "notebooks").glob("*.ipynb"), *(ROOT / "docs").glob("*.md"),
             ROOT / "README.md"]
    for path in files:
        text = path.read_text()
        if re.search(r"\bSPEC\b", text):
            problems.append(f"{path.relative_to(ROOT)} cites SPEC, which is not part of the repository")
        for cited in re.findall(r"DESIGN §(\d+(?:\.\d+)?)", text):
            if cited not in sections:
                problems.append(f"{path.relative_to(ROOT)} cites DESIGN §{cited}, which does not exist")
    assert not problems, "\n".join(problems)
