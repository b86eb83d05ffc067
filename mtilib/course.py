"""The course runner: execute the numbered notebooks with papermill and summarise them.

``mtilib course [--quick] [--only NN ...] [--out DIR]`` is what ``make course`` and the notebook
tests call. Each notebook runs in its own kernel with parameters injected into the cell tagged
``parameters``; its executed copy goes to ``OUT/NN_name.ipynb`` and its artefacts (including the
``metrics.json`` the tests read) to ``OUT/NN_name/``.
"""

from __future__ import annotations

import json
import math
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = REPO_ROOT / "notebooks"
DEFAULT_OUT = REPO_ROOT / "build" / "course"
DEFAULT_DATA = REPO_ROOT / "data_samples" / "phantom"
KERNEL_NAME = "mtilib"
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_NB_NAME = re.compile(r"^(\d\d)_[\w-]+\.ipynb$")


@dataclass
class NotebookResult:
    """Outcome of one executed notebook."""

    notebook: str
    status: str  # "ok" or "failed"
    seconds: float
    metrics: dict = field(default_factory=dict)
    error: str = ""


def write_metrics(out_dir: str | Path, **metrics) -> Path:
    """Write ``metrics.json`` for the course runner and the tests; values must be JSON numbers,
    strings, booleans or lists of them. NaN is refused rather than written as invalid JSON."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    clean = {}
    for key, value in metrics.items():
        if hasattr(value, "item"):  # numpy / torch scalars
            value = value.item()
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"metric {key!r} is {value}; metrics.json holds finite numbers only")
        clean[key] = value
    path = out / "metrics.json"
    path.write_text(json.dumps(clean, indent=2, sort_keys=True))
    return path


def discover(notebook_dir: Path = NOTEBOOK_DIR, only: list[str] | None = None) -> list[Path]:
    """Numbered notebooks ``NN_name.ipynb`` in order; ``only`` selects by number (``"03"`` or ``3``)."""
    books = sorted(p for p in notebook_dir.glob("*.ipynb") if _NB_NAME.match(p.name))
    if only:
        wanted = {f"{int(n):02d}" for n in only}
        missing = wanted - {p.name[:2] for p in books}
        if missing:
            raise FileNotFoundError(f"no notebook numbered {', '.join(sorted(missing))} in {notebook_dir}")
        books = [p for p in books if p.name[:2] in wanted]
    return books


def ensure_kernel() -> str:
    """Install (once, into this environment) the ``mtilib`` kernelspec pointing at this Python.

    A named kernel inside ``sys.prefix`` cannot be shadowed by a user's own ``python3`` kernel.
    """
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        spec = KernelSpecManager().get_kernel_spec(KERNEL_NAME)
        if Path(spec.argv[0]).resolve() == Path(sys.executable).resolve():
            return KERNEL_NAME
    except NoSuchKernel:
        pass
    from ipykernel.kernelspec import install

    install(kernel_name=KERNEL_NAME, display_name="Python (mtilib)", prefix=sys.prefix)
    return KERNEL_NAME


def _strip_ansi(text: str) -> str:
    return _ANSI.sub("", text)


def run_notebook(
    path: Path,
    out_root: Path,
    quick: bool,
    seed: int = 0,
    device: str = "auto",
    data_dir: Path = DEFAULT_DATA,
    cell_timeout: int = 900,
    extra_parameters: dict | None = None,
    progress: bool = False,
) -> NotebookResult:
    """Execute one notebook; never raises for a notebook error, returns a failed result instead."""
    import papermill as pm
    from papermill.exceptions import PapermillExecutionError

    stem = path.stem
    out_dir = (out_root / stem).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics_path = out_dir / "metrics.json"
    if metrics_path.exists():
        metrics_path.unlink()  # never report a stale result from an earlier run
    params = {
        "QUICK": bool(quick),
        "SEED": int(seed),
        "DEVICE": device,
        "DATA_DIR": str(Path(data_dir).resolve()),
        "OUT_DIR": str(out_dir),
    }
    params.update(extra_parameters or {})
    stderr_path = out_dir / "stderr.txt"
    start = time.perf_counter()
    error = ""
    try:
        with open(stderr_path, "w") as stderr_file:
            pm.execute_notebook(
                str(path),
                str(out_root / path.name),
                parameters=params,
                kernel_name=ensure_kernel(),
                cwd=str(path.parent),
                progress_bar=progress,
                stderr_file=stderr_file,
                execution_timeout=cell_timeout,
                request_save_on_cell_execute=False,
            )
        status = "ok"
    except PapermillExecutionError as exc:
        status = "failed"
        # papermill counts the injected-parameters cell too; report the source-notebook cell.
        error = (
            f"{path.name}: cell {exc.cell_index} (execution count {exc.exec_count}) raised "
            f"{exc.ename}: {_strip_ansi(str(exc.evalue))}\n"
            + _strip_ansi("\n".join(exc.traceback))
        )
    except Exception as exc:  # kernel death, timeout, bad notebook JSON: still name the notebook
        status = "failed"
        error = f"{path.name}: {type(exc).__name__}: {_strip_ansi(str(exc))}"
    seconds = time.perf_counter() - start
    if status == "ok" and stderr_path.exists() and stderr_path.stat().st_size == 0:
        stderr_path.unlink()
    elif status == "failed" and stderr_path.exists():
        tail = stderr_path.read_text()[-2000:].strip()
        if tail:
            error += f"\n--- stderr (last 2000 characters) ---\n{tail}"
    metrics: dict = {}
    if metrics_path.exists():
        metrics = json.loads(metrics_path.read_text())
    elif status == "ok":
        status = "failed"
        error = f"{path.name}: ran but wrote no metrics.json to OUT_DIR ({out_dir})"
    return NotebookResult(path.name, status, seconds, metrics, error)


def _format_metrics(metrics: dict, limit: int = 4) -> str:
    parts = []
    for key, value in list(metrics.items())[:limit]:
        if isinstance(value, float):
            value = f"{value:.3g}"
        parts.append(f"{key}={value}")
    more = len(metrics) - limit
    return ", ".join(parts) + (f" (+{more})" if more > 0 else "")


def summary_table(results: list[NotebookResult]) -> str:
    """A plain-text table: notebook, status, seconds, key metrics."""
    rows = [("notebook", "status", "seconds", "key metrics")]
    rows += [(r.notebook, r.status, f"{r.seconds:.1f}", _format_metrics(r.metrics)) for r in results]
    rows.append(("total", f"{sum(r.status == 'ok' for r in results)}/{len(results)} ok",
                 f"{sum(r.seconds for r in results):.1f}", ""))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    lines = []
    for i, row in enumerate(rows):
        lines.append("  ".join(cell.ljust(widths[j]) for j, cell in enumerate(row[:3])) + "  " + row[3])
        if i == 0 or i == len(rows) - 2:
            lines.append("-" * (sum(widths) + 6 + 11))
    return "\n".join(lines)


def run_course(
    quick: bool = False,
    only: list[str] | None = None,
    out: str | Path = DEFAULT_OUT,
    seed: int = 0,
    device: str = "auto",
    data_dir: str | Path = DEFAULT_DATA,
    notebook_dir: str | Path = NOTEBOOK_DIR,
    cell_timeout: int = 900,
    fail_fast: bool = False,
    echo=print,
) -> list[NotebookResult]:
    """Execute the notebooks in order, echo progress and failures, write ``summary.json``."""
    out_root = Path(out).resolve()
    out_root.mkdir(parents=True, exist_ok=True)
    books = discover(Path(notebook_dir), only)
    if not books:
        raise FileNotFoundError(f"no numbered notebooks (NN_name.ipynb) in {notebook_dir}")
    results = []
    for book in books:
        echo(f"[course] {book.name} ({'quick' if quick else 'full'}) ...")
        result = run_notebook(book, out_root, quick, seed, device, Path(data_dir), cell_timeout)
        results.append(result)
        echo(f"[course] {book.name}: {result.status} in {result.seconds:.1f} s")
        if result.error:
            echo(result.error)
        if result.status != "ok" and fail_fast:
            break
    (out_root / "summary.json").write_text(
        json.dumps([r.__dict__ for r in results], indent=2, default=str)
    )
    return results
