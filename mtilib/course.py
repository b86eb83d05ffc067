"""The course runner: execute the numbered notebooks with papermill and summarise them.

``mtilib course [--quick] [--only NN ...] [--out DIR]`` is what ``make course`` and the notebook
tests call. Each notebook runs in its own kernel with parameters injected into the cell tagged
``parameters``; its executed copy goes to ``OUT/NN_name.ipynb`` and its artefacts (including the
``metrics.json`` the tests read) to ``OUT/NN_name/``.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = REPO_ROOT / "notebooks"
DEFAULT_OUT = REPO_ROOT / "build" / "course"
DEFAULT_DATA = REPO_ROOT / "data_samples" / "phantom"
KERNEL_NAME = "mtilib"
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_NB_NAME = re.compile(r"^(\d\d)_[\w-]+\.ipynb$")


#: Seconds a notebook should take on a 2-core CPU when nothing says otherwise (its metadata
#: ``mtilib.budget_s`` does: about twice its measured time, see docs/benchmarks.md).
DEFAULT_BUDGET_S = {"quick": 120.0, "full": 300.0}
#: The hard wall-clock limit of a notebook is this many times its budget.
LIMIT_FACTOR = 5.0
#: A kernel (and its client) that used no CPU for this long while a cell was running has stopped
#: answering: a lost message leaves both waiting for each other forever.
HANG_AFTER_S = 180.0


def default_jobs() -> int:
    """Notebooks ``mtilib course`` runs at a time unless told otherwise: 2 on a machine with two or
    more cores (much of a notebook is single-threaded: kernel start, imports, plotting), else 1."""
    return min(2, os.cpu_count() or 1)


@dataclass
class NotebookResult:
    """Outcome of one executed notebook.

    ``status``: ``"ok"``; ``"failed"`` (a cell raised, or no metrics.json); ``"hung"`` (the kernel
    died or stopped answering, on the retry too); ``"timeout"`` (still computing at the wall-clock
    limit). ``attempts``: 2 when a hung or dead kernel was retried. ``budget_s``: what it should
    take; the summary marks a notebook that took longer.
    """

    notebook: str
    status: str
    seconds: float
    metrics: dict = field(default_factory=dict)
    error: str = ""
    budget_s: float | None = None
    attempts: int = 1

    @property
    def over_budget(self) -> bool:
        return self.budget_s is not None and self.seconds > self.budget_s


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
    """Numbered notebooks ``NN_name.ipynb`` in order; ``only`` selects by number (``"04"`` or ``4``)."""
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


def notebook_budget(path: Path, quick: bool) -> float:
    """Seconds notebook ``path`` should take in QUICK or full mode: its metadata
    ``{"mtilib": {"budget_s": {"quick": s, "full": s}}}``, else :data:`DEFAULT_BUDGET_S`."""
    mode = "quick" if quick else "full"
    try:
        meta = json.loads(path.read_text()).get("metadata", {})
        return float(meta["mtilib"]["budget_s"][mode])
    except (OSError, ValueError, KeyError, TypeError):
        return DEFAULT_BUDGET_S[mode]


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
    limit_s: float | None = None,
    hang_after_s: float = HANG_AFTER_S,
    retries: int = 1,
    echo=None,
    cwd: Path | None = None,
    threads: int | None = None,
) -> NotebookResult:
    """Execute one notebook; never raises for a notebook error, returns a failed result instead.

    The notebook runs in a separate process (papermill and its kernel), watched from here:
    ``limit_s`` (default :data:`LIMIT_FACTOR` × its budget) is a hard wall-clock limit; a kernel
    that dies, or that stops answering (the process tree used no CPU for ``hang_after_s`` seconds),
    is killed and the notebook run again, up to ``retries`` times. A cell that raised is never
    retried: it would raise again. The kernel runs in ``cwd`` (default: the notebook's folder, which
    its relative paths assume; a generated copy elsewhere passes the course's folder). ``threads``
    sets the kernel's intra-op threads (``OMP_NUM_THREADS``; default: inherited).
    """
    budget = notebook_budget(path, quick)
    limit = float(limit_s) if limit_s is not None else LIMIT_FACTOR * budget
    out_dir = (out_root / path.stem).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    params = {
        "QUICK": bool(quick),
        "SEED": int(seed),
        "DEVICE": device,
        "DATA_DIR": str(Path(data_dir).resolve()),
        "OUT_DIR": str(out_dir),
    }
    params.update(extra_parameters or {})
    request = {"path": str(path), "output": str(out_root / path.name), "out_dir": str(out_dir),
               "parameters": params, "cell_timeout": cell_timeout, "progress": progress,
               "cwd": str(Path(cwd or path.parent).resolve()), "threads": threads}
    total = 0.0
    attempt = 0
    while True:
        attempt += 1
        status, error, seconds = _attempt(request, limit, hang_after_s)
        total += seconds
        if status == "hung" and attempt <= retries:
            if echo:
                echo(f"[course] {path.name}: {error.splitlines()[0]}; running it again")
            continue
        break
    metrics: dict = {}
    metrics_path = out_dir / "metrics.json"
    if status == "ok":
        if metrics_path.exists():
            metrics = json.loads(metrics_path.read_text())
        else:
            status = "failed"
            error = f"{path.name}: ran but wrote no metrics.json to OUT_DIR ({out_dir})"
    if attempt > 1:
        error = (error + "\n" if error else "") + f"(run {attempt} times: the kernel hung or died before)"
    return NotebookResult(path.name, status, total, metrics, error, budget, attempt)


def _attempt(request: dict, limit: float, hang_after_s: float) -> tuple[str, str, float]:
    """Run one notebook once in a worker process; ``-> (status, error, seconds)``."""
    import psutil

    out_dir = Path(request["out_dir"])
    name = Path(request["path"]).name
    for stale in ("metrics.json", "_result.json", "_progress.json"):
        (out_dir / stale).unlink(missing_ok=True)  # never report a result of an earlier run
    request_path = out_dir / "_request.json"
    request_path.write_text(json.dumps(request))
    start = time.perf_counter()
    env = dict(os.environ)
    if request.get("threads"):  # the kernel inherits the worker's environment
        env.update({name: str(request["threads"]) for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")})
    with open(out_dir / "runner.log", "w") as log:
        worker = subprocess.Popen([sys.executable, "-m", "mtilib.course", "--worker", str(request_path)],
                                  stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
    watch = psutil.Process(worker.pid)
    cpu_seen: dict[int, float] = {}
    idle = IdleClock(threshold_s=0.01 * hang_after_s, start=time.perf_counter())
    verdict = None
    while worker.poll() is None:
        time.sleep(min(0.5, hang_after_s / 6))
        now = time.perf_counter()
        idle_since = idle.update(now, _tree_cpu_used(watch, cpu_seen))
        cell = _progress_cell(out_dir)
        if now - start > limit:
            busy = now - idle_since < min(hang_after_s, 30.0)
            verdict = ("timeout" if busy else "hung",
                       f"{name}: passed its wall-clock limit of {limit:.0f} s"
                       + (f" in cell {cell}" if cell is not None else "")
                       + ("; it was still computing" if busy else "; the kernel was idle"))
        elif now - idle_since > hang_after_s:
            verdict = ("hung", f"{name}: the kernel stopped answering"
                       + (f" in cell {cell}" if cell is not None else "")
                       + f" (no CPU used for {hang_after_s:.0f} s by the kernel or its client)")
        if verdict:
            _kill_tree(watch)
            worker.wait()
            break
    seconds = time.perf_counter() - start
    request_path.unlink(missing_ok=True)
    (out_dir / "_progress.json").unlink(missing_ok=True)
    if verdict:
        return verdict[0], verdict[1], seconds
    result_path = out_dir / "_result.json"
    if not result_path.exists():
        tail = (out_dir / "runner.log").read_text()[-2000:].strip()
        return "hung", f"{name}: the runner process ended with code {worker.returncode} and no result\n{tail}", seconds
    result = json.loads(result_path.read_text())
    result_path.unlink()
    if result["status"] == "ok" and not (out_dir / "runner.log").read_text().strip():
        (out_dir / "runner.log").unlink()
    return result["status"], result.get("error", ""), seconds


class IdleClock:
    """When a watched process tree last showed signs of work: ``update(now, cpu_s)`` takes the CPU
    seconds the tree used since the previous update and returns the time since which it has used
    no more than ``threshold_s`` in total.

    CPU use is summed over the polls since the tree was last busy, not judged poll by poll: a
    kernel that computes through a long cell on a contended machine may get a few hundredths of a
    CPU second per half-second poll, and it is still working. (Judged per poll, the threshold of a
    180 s hang limit, 1.8 s, can never be reached in a 0.5 s poll on 2 cores, so every notebook
    that ran longer than 180 s was taken for hung.)"""

    def __init__(self, threshold_s: float, start: float):
        self.threshold_s = threshold_s
        self.idle_since = start
        self._pending = 0.0

    def update(self, now: float, cpu_s: float) -> float:
        self._pending += max(0.0, cpu_s)
        if self._pending > self.threshold_s:
            self.idle_since, self._pending = now, 0.0
        return self.idle_since


def _tree_cpu_used(proc, seen: dict[int, float]) -> float:
    """CPU seconds ``proc`` and its descendants used since the last call (``seen`` keeps each
    process's last reading; a process seen for the first time counts with all it used)."""
    import psutil

    advanced = 0.0
    try:
        procs = [proc] + proc.children(recursive=True)
    except psutil.Error:
        return 0.0
    for p in procs:
        try:
            times = p.cpu_times()
        except psutil.Error:
            continue
        used = times.user + times.system
        before = seen.get(p.pid)
        advanced += used - before if before is not None else used
        seen[p.pid] = used
    return advanced


def _kill_tree(proc) -> None:
    """Kill a process and every descendant (the kernel runs in a session of its own)."""
    import psutil

    try:
        procs = proc.children(recursive=True) + [proc]
    except psutil.Error:
        procs = [proc]
    for p in procs:
        try:
            p.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(procs, timeout=10)


def _progress_cell(out_dir: Path) -> int | None:
    try:
        return json.loads((out_dir / "_progress.json").read_text())["cell"]
    except (OSError, ValueError, KeyError):
        return None


def _worker(request_path: str) -> int:
    """The worker process: execute one notebook with papermill, write ``_result.json``."""
    # jsonschema (under nbformat's validator) registers an "iri" format checker when the optional
    # rfc3987-syntax package is importable, and importing it compiles a grammar: 1.9 s of the
    # worker's 3.5 s papermill import on a 2-core laptop, paid once per notebook. Notebook
    # validation never uses that format, so the worker tells Python the package is absent.
    sys.modules.setdefault("rfc3987_syntax", None)
    import papermill as pm
    from nbclient.exceptions import CellTimeoutError, DeadKernelError
    from papermill.exceptions import PapermillExecutionError

    request = json.loads(Path(request_path).read_text())
    # the kernel inherits this: explorers draw static frames in a headless run (mtilib.widgets)
    os.environ["MTILIB_STATIC_WIDGETS"] = "1"
    out_dir = Path(request["out_dir"])
    path = Path(request["path"])
    progress_path = out_dir / "_progress.json"

    def on_cell_start(cell, cell_index):
        progress_path.write_text(json.dumps({"cell": cell_index}))

    stderr_path = out_dir / "stderr.txt"
    result: dict = {"status": "ok"}
    try:
        with open(stderr_path, "w") as stderr_file:
            pm.execute_notebook(
                str(path), request["output"], parameters=request["parameters"],
                kernel_name=ensure_kernel(), cwd=request.get("cwd", str(path.parent)), progress_bar=request["progress"],
                stderr_file=stderr_file, execution_timeout=request["cell_timeout"],
                request_save_on_cell_execute=False, on_cell_start=on_cell_start,
            )
    except PapermillExecutionError as exc:
        # papermill counts the injected-parameters cell too; report the source-notebook cell.
        result = {"status": "failed", "error": (
            f"{path.name}: cell {exc.cell_index} (execution count {exc.exec_count}) raised "
            f"{exc.ename}: {_strip_ansi(str(exc.evalue))}\n" + _strip_ansi("\n".join(exc.traceback)))}
    except DeadKernelError as exc:
        result = {"status": "hung", "error": f"{path.name}: the kernel died ({_strip_ansi(str(exc))[:300]})"}
    except CellTimeoutError as exc:
        result = {"status": "timeout", "error": f"{path.name}: a cell ran past --cell-timeout "
                                                f"({_strip_ansi(str(exc))[:300]})"}
    except Exception as exc:  # bad notebook JSON, kernel that never started: still name the notebook
        result = {"status": "failed", "error": f"{path.name}: {type(exc).__name__}: {_strip_ansi(str(exc))}"}
    if stderr_path.exists():
        if result["status"] == "ok" and stderr_path.stat().st_size == 0:
            stderr_path.unlink()
        elif result["status"] != "ok":
            tail = stderr_path.read_text()[-2000:].strip()
            if tail:
                result["error"] += f"\n--- stderr (last 2000 characters) ---\n{tail}"
    (out_dir / "_result.json").write_text(json.dumps(result))
    return 0


def _format_metrics(metrics: dict, limit: int = 4) -> str:
    parts = []
    for key, value in list(metrics.items())[:limit]:
        if isinstance(value, float):
            value = f"{value:.3g}"
        parts.append(f"{key}={value}")
    more = len(metrics) - limit
    return ", ".join(parts) + (f" (+{more})" if more > 0 else "")


def repo_state(root: Path = REPO_ROOT) -> dict:
    """``{"commit": short hash or None, "dirty": bool}``: the checkout the course runs from
    (``dirty``: tracked files differ from the commit; without git, ``commit`` is None)."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True,
                                text=True, timeout=20)
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                                capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return {"commit": None, "dirty": True}
    if commit.returncode != 0:
        return {"commit": None, "dirty": True}
    return {"commit": commit.stdout.strip(), "dirty": bool(status.stdout.strip())}


def summary_table(results: list[NotebookResult]) -> str:
    """A plain-text table: notebook, status, seconds, budget (``OVER`` past it), key metrics."""
    rows = [("notebook", "status", "seconds", "budget", "key metrics")]
    for r in results:
        status = r.status + (" (retried)" if r.attempts > 1 else "")
        budget = "" if r.budget_s is None else f"{r.budget_s:.0f}" + (" OVER" if r.over_budget else "")
        rows.append((r.notebook, status, f"{r.seconds:.1f}", budget, _format_metrics(r.metrics)))
    over = sum(r.over_budget for r in results)
    rows.append(("total", f"{sum(r.status == 'ok' for r in results)}/{len(results)} ok",
                 f"{sum(r.seconds for r in results):.1f}", f"{over} over" if over else "", ""))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = []
    for i, row in enumerate(rows):
        lines.append("  ".join(cell.ljust(widths[j]) for j, cell in enumerate(row[:4])) + "  " + row[4])
        if i == 0 or i == len(rows) - 2:
            lines.append("-" * (sum(widths) + 8 + 11))
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
    limit_factor: float = LIMIT_FACTOR,
    hang_after_s: float = HANG_AFTER_S,
    jobs: int = 1,
) -> list[NotebookResult]:
    """Execute the notebooks, echo progress and failures, write ``summary.json``; results in
    notebook order.

    ``jobs`` notebooks run at a time, each kernel with ``cpu_count // jobs`` threads: the notebooks
    are independent (each writes only its own output folder), and much of a notebook's time is
    single-threaded (kernel start, imports, plotting), so two at a time on two cores finish sooner
    than one at a time with two threads. With ``fail_fast``, no notebook starts after a failure.
    """
    out_root = Path(out).resolve()
    out_root.mkdir(parents=True, exist_ok=True)
    books = discover(Path(notebook_dir), only)
    if not books:
        raise FileNotFoundError(f"no numbered notebooks (NN_name.ipynb) in {notebook_dir}")
    if jobs < 1:
        raise ValueError(f"jobs must be at least 1, got {jobs}")
    jobs = min(jobs, len(books))
    threads = max(1, (os.cpu_count() or 1) // jobs) if jobs > 1 else None
    failed = threading.Event()

    def run(book: Path) -> NotebookResult | None:
        if failed.is_set():
            return None
        echo(f"[course] {book.name} ({'quick' if quick else 'full'}) ...")
        limit = limit_factor * notebook_budget(book, quick)
        result = run_notebook(book, out_root, quick, seed, device, Path(data_dir), cell_timeout,
                              limit_s=limit, hang_after_s=hang_after_s, echo=echo, threads=threads)
        late = f" (budget {result.budget_s:.0f} s: OVER)" if result.over_budget else ""
        echo(f"[course] {book.name}: {result.status} in {result.seconds:.1f} s{late}")
        if result.error:
            echo(result.error)
        if result.status != "ok" and fail_fast:
            failed.set()
        return result

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        results = [r for r in pool.map(run, books) if r is not None]
    wall = time.perf_counter() - started
    echo(f"[course] {len(results)} notebook(s) in {wall:.1f} s wall clock, {jobs} at a time")
    # what this run executed, for tools that reuse it (mtilib site reuses a run of the same commit)
    (out_root / "course_run.json").write_text(json.dumps({
        **repo_state(), "quick": bool(quick), "jobs": jobs, "wall_seconds": wall, "seed": seed,
        "notebooks": [r.notebook for r in results], "date": time.strftime("%Y-%m-%d %H:%M"),
        "notebook_dir": str(Path(notebook_dir).resolve()),
    }, indent=2))
    (out_root / "summary.json").write_text(
        json.dumps([{**r.__dict__, "over_budget": r.over_budget} for r in results], indent=2, default=str)
    )
    return results


if __name__ == "__main__":  # the worker process of run_notebook
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        sys.exit(_worker(sys.argv[2]))
    sys.exit("usage: python -m mtilib.course --worker REQUEST.json (internal; use `mtilib course`)")
