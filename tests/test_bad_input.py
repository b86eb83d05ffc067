"""Bad input through the command line: one clear line naming the file, no traceback, a
documented exit code, and no existing file changed.

Exit codes (README): 0 done, 1 invalid input (data, image, checkpoint, config), 2 bad usage,
3 refused to replace finished work or to write among the inputs (pass --force / --resume).

``cli`` runs ``python -m mtilib.cli`` in a subprocess, exactly as a user would; ``run`` calls the
same ``main()`` in this process (the full matrix of broken files would otherwise spend minutes
importing torch). Every kind of bad input goes through the subprocess at least once.
"""

import gzip
import hashlib
import io
import json
import shutil
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from mtilib.course import DEFAULT_DATA

pytestmark = pytest.mark.slow

SHIPPED = DEFAULT_DATA.parent / "checkpoints" / "mtinet_course.pt"
INPUT, USAGE, REFUSED = 1, 2, 3


def cli(*args, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mtilib.cli", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, timeout=600)


def run(*args) -> subprocess.CompletedProcess:
    """``main()`` in this process, with stdout and stderr captured (an uncaught exception escapes)."""
    from mtilib.cli import main

    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        try:
            code = main([str(a) for a in args])
        except SystemExit as exc:
            code = exc.code
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


def hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def assert_one_line_error(done, code: int, *must_name: str, command: str | None = None):
    """Exit ``code``, no traceback, one line on stderr naming each of ``must_name``."""
    assert done.returncode == code, (done.returncode, done.stderr[-2000:])
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    if command:
        assert lines[0].startswith(f"mtilib {command}: "), lines[0]
    for text in must_name:
        assert str(text) in lines[0], (text, lines[0])
    return lines[0]


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """A small valid data set (quick preset: 48×48×8, 2 training and 2 test cases)."""
    root = tmp_path_factory.mktemp("bad-input") / "data"
    done = cli("phantom", "--out", root, "--preset", "quick", "--cases", "2", "--test-cases", "2",
               "--seed", "3", "--classes", "hcc", "cyst")
    assert done.returncode == 0, done.stderr
    return root


@pytest.fixture
def data(base, tmp_path) -> Path:
    target = tmp_path / "data"
    shutil.copytree(base, target)
    return target


def phase_files(root: Path, split="test") -> list[Path]:
    index = json.loads((root / "dataset.json").read_text())
    case = next(r for r in index["mtilib"]["cases"] if r["split"] == split)["case"]
    folder = "imagesTs" if split == "test" else "imagesTr"
    return [root / folder / f"{case}_{k:04d}.nii.gz" for k in range(4)]


def rewrite(path: Path, data, affine=None, dtype=None) -> None:
    img = nib.load(path)
    new = nib.Nifti1Image(np.asarray(data), img.affine if affine is None else affine)
    if dtype is not None:
        new.set_data_dtype(dtype)
    nib.save(new, path)


def test_valid_input_passes_every_command(data, tmp_path):
    """The baseline the other cases break: the same files pass check, evaluate and predict."""
    assert cli("dataset", "check", data).returncode == 0
    done = cli("evaluate", "--ckpt", SHIPPED, "--data", data, "--out", tmp_path / "eval.json")
    assert done.returncode == 0, done.stderr
    done = cli("predict", "--ckpt", SHIPPED, "--images", *phase_files(data), "--out", tmp_path / "pred")
    assert done.returncode == 0, done.stderr


# --- broken images -----------------------------------------------------------------------------------

def _break_missing(path):
    path.unlink()


def _break_shape(path):
    rewrite(path, np.asanyarray(nib.load(path).dataobj)[:, :-8])


def _break_affine(path):
    img = nib.load(path)
    affine = img.affine.copy()
    affine[0, 3] += 5.0
    rewrite(path, np.asanyarray(img.dataobj), affine)


def _break_nan(path):
    arr = nib.load(path).get_fdata().astype(np.float32)
    arr[3, 3, 1] = np.nan
    arr[4, 4, 1] = np.inf
    rewrite(path, arr)


def _break_truncated(path):
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])


def _break_empty_file(path):
    path.write_bytes(b"")


def _break_complex(path):
    arr = nib.load(path).get_fdata().astype(np.complex64)
    rewrite(path, arr + 1j)


def _break_bool(path):
    """A NIfTI header with datatype 1 (binary): valid NIfTI, unsupported by nibabel's reader."""
    arr = nib.load(path).get_fdata()
    rewrite(path, arr.astype(np.uint8))
    raw = bytearray(gzip.decompress(path.read_bytes()))
    raw[70:72] = np.int16(1).tobytes()  # datatype
    raw[72:74] = np.int16(1).tobytes()  # bitpix
    path.write_bytes(gzip.compress(bytes(raw)))


def _break_5d(path):
    arr = nib.load(path).get_fdata().astype(np.float32)
    rewrite(path, np.stack([arr, arr], axis=-1)[..., None, :])


def _break_2d(path):
    rewrite(path, nib.load(path).get_fdata().astype(np.float32)[:, :, 0])


def _break_all_zero(path):
    rewrite(path, np.zeros(nib.load(path).shape, np.float32))


BROKEN_PHASE = {
    "missing phase": (_break_missing, "missing"),
    "phase of another shape": (_break_shape, "shape"),
    "phase with another affine": (_break_affine, "affine"),
    "NaN and inf voxels": (_break_nan, "non-finite"),
    "truncated gz": (_break_truncated, "cannot read"),
    "empty file": (_break_empty_file, "cannot read"),
    "complex voxels": (_break_complex, "complex"),
    "bool NIfTI (datatype 1)": (_break_bool, "data type"),
    "5D image": (_break_5d, "shape"),
    "2D image": (_break_2d, "3D"),
    "all-zero image": (_break_all_zero, "constant"),
}


@pytest.mark.parametrize("kind", list(BROKEN_PHASE))
def test_broken_phase_image(kind, data, tmp_path, monkeypatch):
    monkeypatch.delenv("MTILIB_DEBUG", raising=False)
    breaker, problem = BROKEN_PHASE[kind]
    target = phase_files(data)[1]
    breaker(target)
    before = hashes(tmp_path)
    line = assert_one_line_error(run("dataset", "check", data), INPUT, target.name, problem)
    assert line.startswith("mtilib dataset check: invalid data set: ")
    out = tmp_path / "eval.json"
    assert_one_line_error(run("evaluate", "--ckpt", SHIPPED, "--data", data, "--out", out), INPUT,
                          target.name, problem, command="evaluate")
    if kind != "missing phase":  # predict is given the file list; a missing one is another case below
        assert_one_line_error(run("predict", "--ckpt", SHIPPED, "--images", *phase_files(data), "--out",
                                  tmp_path / "pred"), INPUT, target.name, problem, command="predict")
    assert hashes(tmp_path) == before, "a failed command changed or wrote files"


@pytest.mark.parametrize("kind", ["bool NIfTI (datatype 1)", "complex voxels", "truncated gz", "all-zero image",
                                  "phase with another affine"])
def test_broken_phase_image_through_the_real_entry_point(kind, data, tmp_path):
    """The subprocess adds what the in-process run cannot see: library loggers writing to the
    terminal, the exit status of the interpreter."""
    breaker, problem = BROKEN_PHASE[kind]
    target = phase_files(data)[1]
    breaker(target)
    before = hashes(tmp_path)
    assert_one_line_error(cli("predict", "--ckpt", SHIPPED, "--images", *phase_files(data), "--out",
                              tmp_path / "pred"), INPUT, target.name, problem, command="predict")
    if kind.startswith("bool"):
        assert_one_line_error(cli("dataset", "check", data), INPUT, target.name, problem)
    assert hashes(tmp_path) == before


def test_missing_phase_given_to_predict(data, tmp_path):
    files = phase_files(data)
    files[2].unlink()
    assert_one_line_error(run("predict", "--ckpt", SHIPPED, "--images", *files, "--out", tmp_path / "p"),
                          INPUT, files[2].name, "missing", command="predict")
    assert not (tmp_path / "p").exists()


# --- broken labels and dataset.json ----------------------------------------------------------------------

@pytest.mark.parametrize("value,dtype,problem", [(3, np.uint8, "outside {0, 1, 2}"),
                                                 (-1, np.int16, "outside {0, 1, 2}"),
                                                 (1.5, np.float32, "integers 0, 1, 2")])
def test_labels_outside_0_1_2(value, dtype, problem, data, tmp_path):
    label = next((data / "labelsTs").glob("*.nii.gz"))
    arr = np.asanyarray(nib.load(label).dataobj).astype(dtype)
    arr[0, 0, 0] = value
    rewrite(label, arr, dtype=dtype)
    assert_one_line_error(run("evaluate", "--ckpt", SHIPPED, "--data", data, "--out", tmp_path / "e.json"),
                          INPUT, label.name, problem, command="evaluate")
    assert not (tmp_path / "e.json").exists()


def test_empty_dataset_json_and_empty_checkpoint(data, tmp_path):
    (data / "dataset.json").write_bytes(b"")
    assert_one_line_error(run("dataset", "check", data), INPUT, "dataset.json", "not valid JSON")
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    assert_one_line_error(run("evaluate", "--ckpt", empty, "--data", data, "--out", tmp_path / "e.json"), INPUT,
                          empty.name, command="evaluate")


def test_data_folder_without_a_data_set(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_one_line_error(cli("train", "--preset", "quick", "--data", empty, "--out", tmp_path / "run"), INPUT,
                          "dataset.json", "missing", command="train")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("value,problem", [(7, "out of range"), (-1, "out of range"), ("HCC", "integer"),
                                           (True, "integer")])
def test_class_id_in_dataset_json(value, problem, data):
    meta = json.loads((data / "dataset.json").read_text())
    meta["mtilib"]["cases"][0]["class"] = value
    (data / "dataset.json").write_text(json.dumps(meta))
    assert_one_line_error(run("dataset", "check", data), INPUT, "dataset.json", problem)


def test_path_traversal_in_dataset_json(data, tmp_path):
    meta = json.loads((data / "dataset.json").read_text())
    meta["mtilib"]["cases"][0]["case"] = "../../etc/passwd"
    (data / "dataset.json").write_text(json.dumps(meta))
    for args in (("dataset", "check", data),
                 ("evaluate", "--ckpt", SHIPPED, "--data", data, "--out", tmp_path / "e.json")):
        assert_one_line_error(run(*args), INPUT, "dataset.json", "printable name")


def test_control_characters_in_a_case_name_are_escaped(data):
    meta = json.loads((data / "dataset.json").read_text())
    meta["mtilib"]["cases"][0]["case"] = "bad\x00name"
    (data / "dataset.json").write_text(json.dumps(meta))
    done = cli("dataset", "check", data)
    line = assert_one_line_error(done, INPUT, "dataset.json", "printable name")
    assert "\x00" not in done.stderr and "\\x00" in line


def test_missing_data_folder(tmp_path):
    missing = tmp_path / "nowhere"
    for call, args in ((run, ("dataset", "check", missing)),
                       (run, ("evaluate", "--ckpt", SHIPPED, "--data", missing, "--out", tmp_path / "e.json")),
                       (cli, ("train", "--preset", "quick", "--data", missing, "--out", tmp_path / "run"))):
        assert_one_line_error(call(*args), INPUT, missing, "does not exist")
    assert not (tmp_path / "run").exists() and not (tmp_path / "e.json").exists()


# --- broken checkpoints -----------------------------------------------------------------------------------

def test_truncated_and_random_checkpoints(data, tmp_path):
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(SHIPPED.read_bytes()[:100_000])
    random = tmp_path / "random.pt"
    random.write_bytes(np.random.default_rng(0).bytes(5000))
    for call, ckpt in ((cli, truncated), (run, random)):
        assert_one_line_error(call("predict", "--ckpt", ckpt, "--images", *phase_files(data), "--out",
                                   tmp_path / "p"), INPUT, ckpt.name, "cannot be read", command="predict")
        assert_one_line_error(run("evaluate", "--ckpt", ckpt, "--data", data), INPUT, ckpt.name)
    assert not (tmp_path / "p").exists()


def test_checkpoint_of_another_width(data, tmp_path):
    from mtilib.models import build_model
    from mtilib.train import TrainConfig
    from mtilib.train.checkpoint import save_checkpoint

    state = torch.load(SHIPPED, weights_only=True)
    other = TrainConfig.from_dict(state["config"])
    other.model.width = 8
    state["model"] = build_model(other.model).state_dict()  # width-8 weights under a width-16 config
    ckpt = save_checkpoint(tmp_path / "other.pt", {k: v for k, v in state.items()
                                                    if k not in ("format_version", "mtilib_version")})
    assert_one_line_error(run("predict", "--ckpt", ckpt, "--images", *phase_files(data), "--out", tmp_path / "p"),
                          INPUT, ckpt.name, "do not fit", command="predict")


def test_pickle_payload_in_a_checkpoint_is_refused(data, tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    ckpt = tmp_path / "evil.pt"
    torch.save({"model": Payload()}, ckpt)
    assert_one_line_error(cli("predict", "--ckpt", ckpt, "--images", *phase_files(data), "--out", tmp_path / "p"),
                          INPUT, ckpt.name, command="predict")
    assert not marker.exists()


# --- never clobber ------------------------------------------------------------------------------------------

def test_train_refuses_a_folder_that_holds_a_run(data, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    for name, text in (("best.pt", "b"), ("last.pt", "l"), ("config.yaml", "c"), ("history.jsonl", "h\n")):
        (run_dir / name).write_text(text)
    before = hashes(run_dir)
    line = assert_one_line_error(cli("train", "--preset", "quick", "--data", data, "--out", run_dir), REFUSED,
                                 str(run_dir), "--resume", "--force", command="train")
    assert "finished" in line or "holds a run" in line
    assert hashes(run_dir) == before


def test_train_force_starts_a_fresh_history(data, tmp_path):
    run_dir = tmp_path / "run"
    args = ("train", "--preset", "quick", "--data", data, "--out", run_dir, "--epochs", "1")
    assert run(*args).returncode == 0
    done = run(*args, "--force")
    assert done.returncode == 0, done.stderr
    epochs = [json.loads(line)["epoch"] for line in (run_dir / "history.jsonl").read_text().splitlines()]
    assert epochs == [1]


def test_resume_with_another_model_config(data, tmp_path):
    from mtilib.train import TrainConfig

    run_dir = tmp_path / "run"
    assert run("train", "--preset", "quick", "--data", data, "--out", run_dir, "--epochs", "1").returncode == 0
    other = TrainConfig.preset("quick")
    other.model.width = 6
    other.to_yaml(tmp_path / "other.yaml")
    before = hashes(run_dir)
    assert_one_line_error(run("train", "--config", tmp_path / "other.yaml", "--data", data, "--out", run_dir,
                              "--resume"), INPUT, "last.pt", "another model config", command="train")
    assert hashes(run_dir) == before


def test_predict_refuses_existing_results_and_the_inputs_folder(data, tmp_path):
    files = phase_files(data)
    out = tmp_path / "pred"
    assert run("predict", "--ckpt", SHIPPED, "--images", *files, "--out", out).returncode == 0
    before = hashes(tmp_path)
    assert_one_line_error(cli("predict", "--ckpt", SHIPPED, "--images", *files, "--out", out), REFUSED,
                          "lesion_mask.nii.gz", "earlier prediction", "--force", command="predict")
    assert hashes(tmp_path) == before
    done = run("predict", "--ckpt", SHIPPED, "--images", *files, "--out", out, "--force")
    assert done.returncode == 0, done.stderr

    inputs_before = hashes(data)
    assert_one_line_error(run("predict", "--ckpt", SHIPPED, "--images", *files, "--out", files[0].parent),
                          REFUSED, str(files[0].parent), "inputs", command="predict")
    assert hashes(data) == inputs_before


def test_predict_never_replaces_an_input_file_even_with_force(data, tmp_path):
    files = phase_files(data)
    shutil.copy(files[0], tmp_path / "labels.nii.gz")  # an input that is named like an output
    images = [tmp_path / "labels.nii.gz", *files[1:]]
    before = hashes(tmp_path)
    assert_one_line_error(run("predict", "--ckpt", SHIPPED, "--images", *images, "--out", tmp_path, "--force"),
                          REFUSED, "labels.nii.gz", command="predict")
    assert hashes(tmp_path) == before


def test_predict_out_is_a_file(data, tmp_path):
    target = tmp_path / "a_file.txt"
    target.write_text("keep me")
    assert_one_line_error(cli("predict", "--ckpt", SHIPPED, "--images", *phase_files(data), "--out", target),
                          USAGE, target.name, "not a folder", command="predict")
    assert target.read_text() == "keep me"


def test_evaluate_refuses_to_replace_an_earlier_evaluation(data, tmp_path):
    ckpt = tmp_path / "model.pt"
    shutil.copy(SHIPPED, ckpt)
    earlier = tmp_path / "evaluation_test.json"
    earlier.write_text('{"earlier": true}')
    assert_one_line_error(run("evaluate", "--ckpt", ckpt, "--data", data), REFUSED, earlier.name, "--force",
                          command="evaluate")
    assert earlier.read_text() == '{"earlier": true}'
    done = run("evaluate", "--ckpt", ckpt, "--data", data, "--force")
    assert done.returncode == 0, done.stderr
    assert "summary" in json.loads(earlier.read_text())


# --- the accepted forms, and what the report says ----------------------------------------------------------

def test_a_single_4d_file_is_accepted(data, tmp_path):
    files = phase_files(data)
    first = nib.load(files[0])
    stacked = np.stack([nib.load(f).get_fdata().astype(np.float32) for f in files], axis=-1)
    four_d = tmp_path / "case_4d.nii.gz"
    nib.save(nib.Nifti1Image(stacked, first.affine), four_d)
    done = cli("predict", "--ckpt", SHIPPED, "--images", four_d, "--out", tmp_path / "pred")
    assert done.returncode == 0, done.stderr
    assert nib.load(tmp_path / "pred" / "lesion_mask.nii.gz").shape == first.shape


def test_wrong_number_of_phase_files_is_a_usage_error(data, tmp_path):
    files = phase_files(data)
    assert_one_line_error(run("predict", "--ckpt", SHIPPED, "--images", *files[:3], "--out", tmp_path / "p"),
                          USAGE, "4 phases", command="predict")


def test_debug_shows_the_traceback(data, tmp_path):
    files = phase_files(data)
    files[1].write_bytes(b"")
    done = cli("--debug", "predict", "--ckpt", SHIPPED, "--images", *files, "--out", tmp_path / "p")
    assert done.returncode == INPUT and "Traceback" in done.stderr


def test_no_lesion_found_is_not_reported_as_a_diagnosis():
    """A confident class for a case without a lesion reads as a diagnosis of nothing."""
    from mtilib.train.inference import CasePrediction, prediction_report

    probs = np.array([0.986, 0.002, 0.002, 0.002, 0.002, 0.003, 0.003])
    empty = CasePrediction("c", np.ones((8, 8, 3), np.uint8), np.zeros((8, 8, 3), np.float32), probs,
                           np.array([0.1, 0.2, 0.3]), np.zeros(3))
    report = prediction_report(empty, (1.0, 1.0, 2.0), 7)
    assert report["lesion_found"] is False and report["lesion_volume_ml"] == 0
    assert report["predicted_class"] is None and report["class_probabilities"] is None
    assert report["enhancement"] is None and "not assessed" in report["assessment"]
    json.dumps(report)

    found = np.ones((8, 8, 3), np.uint8)
    found[2:4, 2:4, 1] = 2
    report = prediction_report(CasePrediction("c", found, None, probs, np.array([0.1, 0.2, 0.3]),
                                              np.array([0.0, 4.0, 0.0])), (1.0, 1.0, 2.0), 7)
    assert report["lesion_found"] and report["predicted_class"] == "hemangioma"
    assert report["assessment"] == "lesion found"


def test_case_probabilities_are_probabilities_whatever_the_rounding():
    """A confident network: slice softmaxes of float32 that sum to 1 ± ulp, weighted by lesion area,
    gave 1 + 2.2e-16 and crashed the metrics. Aggregated probabilities now lie in [0, 1] and sum to 1;
    the metric still refuses genuinely wrong input."""
    from mtilib.data.dataset import aggregate_case
    from mtilib.metrics import classification_metrics

    rng = np.random.default_rng(0)
    worst = 0.0
    y, rows = [], []
    for _ in range(2000):
        slices = rng.integers(1, 30)
        logits = rng.normal(size=(slices, 7)) * rng.choice([1.0, 30.0, 80.0])
        probs = torch.softmax(torch.tensor(logits, dtype=torch.float32), 1).numpy()
        area = rng.integers(0, 400, size=slices).astype(float) * (rng.random(slices) < 0.7)
        case, _ = aggregate_case(probs, None, area)
        assert case.min() >= 0.0 and case.max() <= 1.0
        worst = max(worst, abs(case.sum() - 1.0))
        y.append(int(case.argmax()))
        rows.append(case)
    assert worst <= 4 * np.finfo(np.float64).eps
    classification_metrics(np.array(y), np.stack(rows))  # accepted, no exception
    with pytest.raises(ValueError, match="probabilities"):
        classification_metrics(np.array([0, 1]), np.array([[1.1, -0.1] + [0.0] * 5, [0, 1] + [0.0] * 5]),
                               )


def test_readme_documents_every_exit_code_and_the_flags():
    from mtilib.cli import EXIT_CODES
    from mtilib.course import REPO_ROOT

    readme = (REPO_ROOT / "README.md").read_text()
    for code in EXIT_CODES:
        assert f"| {code} |" in readme, f"exit code {code} is not in the README's table"
    assert "--force" in readme and "--debug" in readme and "MTILIB_DEBUG" in readme


@pytest.mark.parametrize("command", ["results", "bench"])
def test_report_commands_refuse_to_replace_an_earlier_report(command, tmp_path):
    """``mtilib results`` and ``mtilib bench`` take an hour or more; an existing report is refused
    before any of it is spent, and left as it was."""
    report = tmp_path / "report.md"
    report.write_text("an earlier table")
    assert_one_line_error(run(command, "--out", report), REFUSED, report.name, "--force", command=command)
    assert report.read_text() == "an earlier table"
    if command == "results":  # the JSON twin that notebook 10 reads counts as the same report
        report.unlink()
        twin = tmp_path / "report.json"
        twin.write_text("{}")
        assert_one_line_error(run(command, "--out", report), REFUSED, twin.name, "--force", command=command)
        assert twin.read_text() == "{}" and not report.exists()
