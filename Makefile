PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.mtilib-installed
# Every target sets up what it needs: the first run creates .venv (about 2 minutes), later runs
# reuse it until pyproject.toml or constraints.txt change.

.PHONY: setup course test lab student site bench results data-samples checkpoint gpu-check lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-compile \
		torch==2.13.0 -c constraints.txt -e '.[notebook,test,dev,bench]'
	@# pip compiles the bytecode on one core (68 s of its 155 s here); compileall on every core takes
	@# 49 s, less without the packages' own test suites, which nothing here imports. Some packages
	@# ship files for other Python versions that do not compile (pip skips them too): `|| true`.
	$(BIN)/python -m compileall -q -j 0 -x 'site-packages/.+/tests/' \
		$$($(BIN)/python -c "import sysconfig; print(sysconfig.get_path('purelib'))") >/dev/null || true
	$(BIN)/python -c "from mtilib.course import ensure_kernel; ensure_kernel()"
	touch $@

## Execute every notebook (full mode) and print the summary table. COURSE_ARGS="--quick --only 04"
course: setup
	$(BIN)/mtilib course $(COURSE_ARGS)

## Lint, unit tests and every notebook in QUICK mode, on three pytest-xdist workers (each gets an
## equal share of the cores, at least one thread: workers wait for kernels and subprocesses about a
## tenth of the time, and a third worker fills it; measured on 2 cores, 454 s against 481 s with two),
## slow tests first and work stealing, so all finish together. PYTEST_ARGS="-n 0" runs them in one process.
PYTEST_ARGS ?= -n 3 --dist worksteal
test: setup
	$(BIN)/python -m pytest $(PYTEST_ARGS)

## Open JupyterLab on the course with the project's kernel.
lab: setup
	$(BIN)/jupyter lab --notebook-dir=notebooks $(if $(filter 0,$(shell id -u)),--allow-root,)

## The executed course as an offline website in build/site/ (reuses build/course when `make course`
## ran on this commit, else executes the course first; about 4 minutes on 2 cores). Open
## build/site/index.html, or: python -m http.server -d build/site
site: setup
	$(BIN)/mtilib site $(SITE_ARGS)

## Student copies without solutions, in build/student/.
student: setup
	$(BIN)/mtilib student --out build/student

## Benchmarks -> docs/benchmarks.md and docs/figures/ (our networks against MONAI BasicUNet: the bench extra)
bench: setup
	$(BIN)/mtilib bench --out docs/benchmarks.md --force

## The phantom results table -> docs/results.md (about 90 minutes on 2 CPU cores)
results: setup
	$(BIN)/mtilib results --out docs/results.md --jobs 2 --force

## Regenerate the shipped sample data set.
data-samples: setup
	$(BIN)/mtilib phantom --out data_samples/phantom --preset samples --force

## Retrain the shipped checkpoint on the course preset and evaluate it on the sample test cases.
checkpoint: setup
	$(BIN)/python scripts/make_checkpoint.py --force

## On a CUDA machine: bf16 training, kill + resume, 2-process torchrun, evaluate, GPU benchmark.
## GPU_CHECK_ARGS="--device cpu" rehearses it on a CPU.
gpu-check: setup
	$(BIN)/python scripts/gpu_check.py $(GPU_CHECK_ARGS)

lint: setup
	$(BIN)/ruff check mtilib tests notebooks scripts

clean:
	rm -rf build runs .pytest_cache .ruff_cache
