"""Command line: ``mtilib <command>``. Heavy imports happen inside each command.

Every command checks its arguments before it computes, never replaces finished work without
``--force`` (``train``: ``--resume`` or ``--force``), and answers an expected error with one line
``mtilib <command>: <file>: <problem>`` on stderr (the traceback only with ``mtilib --debug`` or
``MTILIB_DEBUG=1``). Exit codes: :data:`EXIT_CODES`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from mtilib import __version__

#: What the exit status of ``mtilib`` means (also in the README).
EXIT_CODES = {
    0: "done",
    1: "invalid input: a data set, image, checkpoint or config that cannot be used (the message names "
       "it); or a notebook failed (course)",
    2: "bad usage: arguments that do not fit together or do not fit the model",
    3: "refused: the command would replace finished work or write among the inputs (see --force / --resume)",
    130: "interrupted (Ctrl-C)",
}


class UsageError(Exception):
    """Arguments that cannot work (exit 2)."""


class RefusedError(Exception):
    """The command would replace finished work or write among its inputs (exit 3)."""


#: The files of a training run; a folder holding any of them holds a run.
RUN_FILES = ("last.pt", "best.pt", "history.jsonl", "config.yaml", "versions.json")
PREDICTION_FILES = ("lesion_mask.nii.gz", "labels.nii.gz", "prediction.json")


def _cmd_info(args) -> int:
    from mtilib.runtime import format_info, info, select_device
    from mtilib.train import TrainConfig
    from mtilib.train.fastpath import choose_fast_paths, fast_paths_report

    data = info()
    # What precision="auto" / channels_last="auto" choose here, measured on the course preset's
    # MTI-Net (a few seconds the first time, then cached).
    cfg = TrainConfig.preset(args.preset)
    paths = choose_fast_paths(cfg.model, select_device("auto"), "auto", "auto", cfg.data.image_size,
                              cfg.optim.batch_size, use_cache=not args.remeasure)
    data["fast_paths"] = {"network": f"{args.preset} preset MTI-Net", **fast_paths_report(paths)}
    print(json.dumps(data, indent=2) if args.json else format_info(data))
    return 0


def _inference_fast_paths(cfg, device):
    """Precision and memory format for inference with a checkpoint's config (``auto`` measured)."""
    from mtilib.train.fastpath import choose_fast_paths

    return choose_fast_paths(cfg.model, device, cfg.precision, cfg.channels_last, cfg.data.image_size,
                             cfg.optim.batch_size)


def _cmd_course(args) -> int:
    from mtilib.course import DEFAULT_OUT, HANG_AFTER_S, LIMIT_FACTOR, default_jobs, run_course, summary_table

    results = run_course(
        quick=args.quick,
        only=args.only,
        out=args.out or DEFAULT_OUT,
        seed=args.seed,
        device=args.device,
        cell_timeout=args.cell_timeout,
        fail_fast=args.fail_fast,
        limit_factor=args.limit_factor or LIMIT_FACTOR,
        hang_after_s=args.hang_after or HANG_AFTER_S,
        jobs=args.jobs or default_jobs(),
    )
    print()
    print(summary_table(results))
    failed = [r for r in results if r.status != "ok"]
    for r in failed:
        print(f"\nFAILED {r.notebook}\n{r.error}", file=sys.stderr)
    return 1 if failed else 0


def _cmd_phantom(args) -> int:
    """Generate a phantom data set in the nnU-Net layout (see mtilib.data.io)."""
    from tqdm import tqdm

    from mtilib.constants import CLASS_NAMES, class_id
    from mtilib.data.io import LAYOUT_ENTRIES, clear_layout, write_dataset
    from mtilib.data.phantom import PhantomConfig, iter_cases

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"{out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not args.force:
            raise RefusedError(f"{out}: is not empty; pass --force to replace the data set in it")
        clear_layout(out)  # only dataset.json and the four image/label folders, nothing else
        leftover = sorted(p.name for p in out.iterdir() if p.name not in LAYOUT_ENTRIES)
        if leftover:
            print(f"note: kept other entries in {out}: {', '.join(leftover)}")

    overrides = {}
    if args.snr is not None:
        overrides["snr"] = args.snr if args.snr > 0 else None
    if args.atypical_rate is not None:
        overrides["atypical_rate"] = args.atypical_rate
    try:
        classes = tuple(class_id(c) for c in args.classes) if args.classes else None
        if classes:
            overrides["classes"] = classes
        config = PhantomConfig.preset(args.preset, **overrides)
        if args.size:
            config = config.with_shape(args.size)  # same field of view, other voxel size
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    n_classes = len(config.classes)
    n_train = args.cases if args.cases is not None else 3 * n_classes
    n_test = args.test_cases if args.test_cases is not None else 2 * n_classes
    if n_train < 0 or n_test < 0 or n_train + n_test == 0:
        raise UsageError("--cases and --test-cases must be >= 0 and not both 0")

    bar = tqdm(total=n_train + n_test, desc="phantom", unit="case", disable=not sys.stderr.isatty())
    train = iter_cases(n_train, args.seed, config)
    test = iter_cases(n_test, args.seed, config, start=n_train)  # seeds continue after the training cases
    description = f"mtilib DCE-MRI liver phantom, preset {config.preset_name}, seed {args.seed}"
    index = write_dataset(out, train, test, dtype=args.dtype, description=description,
                          progress=lambda case_id, split: bar.update(1))
    bar.close()

    size_mb = sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) / 1e6
    print(f"wrote {len(index.cases('train'))} training and {len(index.cases('test'))} test cases to {out} "
          f"({size_mb:.1f} MB, intensities {args.dtype})")
    print(f"preset {config.preset_name}: shape {'x'.join(map(str, config.shape))} voxels, spacing "
          f"{' x '.join(f'{s:.3g}' for s in config.spacing_mm)} mm, phases at "
          f"{', '.join(f'{t:g}' for t in config.phase_times_s)} s, SNR {config.snr}, seed {args.seed}")
    for split in ("train", "test"):
        counts = {}
        for case_id in index.cases(split):
            name = CLASS_NAMES[index.record(case_id)["class"]]
            counts[name] = counts.get(name, 0) + 1
        if counts:
            print(f"  {split}: " + ", ".join(f"{name} {n}" for name, n in counts.items()))
    return 0


def _cmd_dataset_check(args) -> int:
    """Validate a data set on disk and print its summary; exit 1 with the error if it is invalid."""
    from mtilib.data.io import check_dataset, format_summary

    summary = check_dataset(args.root)  # a DatasetError becomes one line "invalid data set: ..."
    print(json.dumps(summary, indent=2) if args.json else format_summary(summary))
    return 0


def _cmd_import_lld(args) -> int:
    from mtilib.data.io import check_dataset, format_summary
    from mtilib.data.lldmmri import import_lld_mmri

    out = Path(args.out)
    if (out / "dataset.json").exists() and not args.force:
        raise RefusedError(f"{out}: holds a data set already; pass --force to replace it, or choose another --out")
    if not 0.0 <= args.test_fraction < 1.0:
        raise UsageError(f"--test-fraction must be in [0, 1), got {args.test_fraction}")
    from mtilib.data.lldmmri import find_annotation, read_annotations

    if not Path(args.src).is_dir():
        raise UsageError(f"{args.src}: the LLD-MMRI image folder does not exist")
    read_annotations(args.annotation or find_annotation(Path(args.src)))  # bad input refused before anything is removed
    if args.force and out.exists():
        from mtilib.data.io import clear_layout

        clear_layout(out)
    _, report = import_lld_mmri(args.src, out, annotation=args.annotation, reference=args.reference,
                                test_fraction=args.test_fraction, seed=args.seed)
    for line in report.lines():
        print(line)
    print(format_summary(check_dataset(out)))
    return 0


def _cmd_site(args) -> int:
    from mtilib.course import DEFAULT_OUT
    from mtilib.site import DEFAULT_SITE, build_site

    try:
        build_site(out=args.out or DEFAULT_SITE, course_out=args.course_out or DEFAULT_OUT, quick=args.quick,
                   force=args.force)
    except FileExistsError as exc:
        raise RefusedError(str(exc)) from exc
    return 0


def _cmd_train(args) -> int:
    from mtilib.train import TrainConfig, train

    if bool(args.config) == bool(args.preset):
        raise UsageError("give exactly one of --config FILE or --preset NAME")
    if args.resume and args.force:
        raise UsageError("--resume continues a run and --force replaces it: give one of them")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"{out}: exists and is not a folder")
    held = [name for name in RUN_FILES if (out / name).exists()]
    if held and not args.resume:
        if not args.force:
            raise RefusedError(f"{out}: holds a run ({', '.join(held)}); pass --resume to continue it "
                               "or --force to replace it")
        for name in held:  # the run's own files only; anything else in the folder stays
            (out / name).unlink()
    cfg = TrainConfig.from_yaml(args.config) if args.config else TrainConfig.preset(args.preset)
    for key, value in (("seed", args.seed), ("device", args.device), ("precision", args.precision)):
        if value is not None:
            setattr(cfg, key, value)
    if args.epochs is not None:
        cfg.optim.epochs = args.epochs
    if args.deterministic:
        cfg.deterministic = True
    result = train(cfg, args.data, args.out, resume=args.resume)
    if result.history:
        print(f"[train] done: best epoch {result.best_epoch} (score {result.best_score:.3f}); "
              f"checkpoints in {result.out_dir}")
    return 0


def _cmd_evaluate(args) -> int:
    from mtilib.data.io import DatasetError
    from mtilib.metrics import headline_metrics
    from mtilib.runtime import select_device
    from mtilib.train import evaluate_cases, load_model, load_volumes

    out = Path(args.out) if args.out else Path(args.ckpt).with_name(f"evaluation_{args.split}.json")
    if out.is_dir():
        raise UsageError(f"{out}: is a folder; --out names the JSON file to write")
    if out.exists() and not args.force:
        raise RefusedError(f"{out}: exists from an earlier evaluation; pass --force to replace it "
                           "or --out to write elsewhere")
    device = select_device(args.device)
    model, cfg, _ = load_model(args.ckpt, device)
    volumes = load_volumes(args.data, args.split)
    if not volumes:
        raise DatasetError(f"{args.data}: no '{args.split}' cases")
    fast = _inference_fast_paths(cfg, device)
    metrics, _ = evaluate_cases(model, volumes, cfg.data.image_size, device, fast.precision,
                                channels_last=fast.channels_last)
    import pandas as pd

    with pd.option_context("display.width", 200, "display.max_columns", 30):
        table = metrics.table()
        shown = [c for c in ("case_id", "dice", "hd95_mm", "assd_mm", "missed_lesion", "true_class_name",
                             "pred_class_name", "enh_abs_err_arterial", "enh_abs_err_venous",
                             "enh_abs_err_delayed") if c in table.columns]
        print(table[shown].round(3).to_string(index=False))
    summary = metrics.summary()
    print("\nsummary:", json.dumps(headline_metrics(summary), indent=2))
    out.parent.mkdir(parents=True, exist_ok=True)
    metrics.to_json(out)
    print(f"per-case table and summary written to {out}")
    return 0


def _check_prediction_out(out: Path, images: list[Path], force: bool) -> None:
    """Refuse, before any computation, an ``--out`` that would lose work or touch the inputs."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"{out}: exists and is not a folder")
    inputs = {p.resolve() for p in images}
    for name in PREDICTION_FILES:  # never, not even with --force: an input is the user's data
        if (out / name).resolve() in inputs:
            raise RefusedError(f"{out / name}: is one of the input images; choose another --out")
    if not force:
        if out.resolve() in {p.parent for p in inputs}:
            raise RefusedError(f"{out}: holds the input images; choose another --out, or pass --force to "
                               "write the results among the inputs")
        existing = [name for name in PREDICTION_FILES if (out / name).exists()]
        if existing:
            raise RefusedError(f"{out / existing[0]}: exists from an earlier prediction; pass --force to "
                               "replace it")


def _cmd_predict(args) -> int:
    from mtilib.constants import DEFAULT_PHASE_TIMES_S, LESION
    from mtilib.data.dataset import CaseVolume
    from mtilib.data.io import align_phase_files, load_phase_images, reference_index, voxel_spacing, write_label_volume
    from mtilib.runtime import select_device
    from mtilib.train import load_model, predict_case
    from mtilib.train.inference import prediction_report

    images_given = [Path(p) for p in args.images]
    out = Path(args.out)
    _check_prediction_out(out, images_given, args.force)
    if args.reference is not None:
        if len(images_given) < 2:
            raise UsageError("--reference resamples separate phase files onto one grid: give one file per phase")
        reference_index(args.reference, len(images_given))  # a bad name is refused before any work
    device = select_device(args.device)
    model, cfg, _ = load_model(args.ckpt, device)
    phases = cfg.model.phases
    if len(images_given) not in (1, phases):
        raise UsageError(f"the model takes {phases} phases: give {phases} files in phase order or one 4D "
                         f"file, got {len(images_given)} files")
    times = args.times or list(DEFAULT_PHASE_TIMES_S[:phases])
    if len(times) != phases:
        raise UsageError(f"--times needs {phases} values, got {len(times)}")
    grids = None
    if args.reference is not None:
        images, affine, grids = align_phase_files(images_given, args.reference)
        for grid in grids:
            print(grid.line())
    else:
        images, affine = load_phase_images(images_given, expected_phases=phases)
    spacing = voxel_spacing(affine)
    volume = CaseVolume.from_arrays(images_given[0].name.split(".")[0], images, times, spacing)
    fast = _inference_fast_paths(cfg, device)
    pred = predict_case(model, volume, cfg.data.image_size, device, fast.precision,
                        channels_last=fast.channels_last)
    out.mkdir(parents=True, exist_ok=True)
    write_label_volume(out / "lesion_mask.nii.gz", pred.label_map == LESION, affine)
    write_label_volume(out / "labels.nii.gz", pred.label_map, affine)
    report = {
        "inputs": [str(p) for p in args.images],
        "phase_times_s": [float(t) for t in times],
        "checkpoint": str(args.ckpt),
        **({"reference_grid": images_given[reference_index(args.reference, len(images_given))].name,
            "resampled": [g.to_dict() for g in grids]} if grids is not None else {}),
        **prediction_report(pred, spacing, cfg.model.num_classes),
    }
    (out / "prediction.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    print(f"wrote {out / 'lesion_mask.nii.gz'}, {out / 'labels.nii.gz'} and {out / 'prediction.json'}")
    return 0


def _refuse_existing_report(paths: list[Path], force: bool, made_by: str) -> None:
    """A report from an earlier run is replaced only with ``--force``: checked before the minutes
    or hours of computing, not after."""
    for path in paths:
        if path.exists() and not force:
            raise RefusedError(f"{path}: exists from an earlier {made_by} run; pass --force to replace it "
                               f"(make {made_by} does), or choose another --out")


def _cmd_bench(args) -> int:
    from mtilib.bench import write_benchmarks

    _refuse_existing_report([Path(args.out)], args.force, "bench")
    write_benchmarks(args.out, course=not args.skip_course)
    return 0


def _cmd_results(args) -> int:
    from mtilib.results import run_results

    out = Path(args.out)
    _refuse_existing_report([out, out.with_suffix(".json")], args.force, "results")  # the table and its JSON twin
    run_results(args.out, args.preset, tuple(args.seeds), args.networks, args.work, jobs=args.jobs)
    return 0


def _cmd_student(args) -> int:
    from mtilib.student import make_student_copies

    written = make_student_copies(args.out)
    print(f"wrote {len(written)} student notebooks (no solutions, no instructor notes) to {args.out}")
    return 0


def _usage(parser: argparse.ArgumentParser):
    """A command for a group called without its subcommand: print the group's help, exit 2."""

    def show(args) -> int:
        parser.print_help()
        return 2

    return show


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mtilib",
        description="MTI-Net for liver tumour DCE-MRI: data, training, evaluation and the course.",
        epilog="exit codes: " + "; ".join(f"{code} {text.split(':')[0]}" for code, text in EXIT_CODES.items()),
    )
    parser.add_argument("--version", action="version", version=f"mtilib {__version__}")
    parser.add_argument("--debug", action="store_true",
                        help="show the Python traceback of an error (or set MTILIB_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", metavar="command")

    p = sub.add_parser("info", help="versions, device, threads and fast paths of this machine")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.add_argument("--preset", default="course", choices=["quick", "course", "paper"],
                   help="the network whose fast paths are measured (default: course)")
    p.add_argument("--remeasure", action="store_true", help="measure again instead of using the cache")
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser("course", help="execute the course notebooks with papermill and summarise them")
    p.add_argument("--quick", action="store_true", help="QUICK mode: small data, few epochs (CI)")
    p.add_argument("--only", nargs="+", metavar="NN", help="run only these notebook numbers")
    p.add_argument("--out", help="where executed notebooks go (default build/course)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:1 | mps")
    p.add_argument("--cell-timeout", type=int, default=900, help="seconds allowed per cell")
    p.add_argument("--fail-fast", action="store_true", help="stop at the first failing notebook")
    p.add_argument("--limit-factor", type=float, default=None,
                   help="hard wall-clock limit per notebook, in multiples of its budget (default 5)")
    p.add_argument("--hang-after", type=float, default=None,
                   help="seconds without CPU use after which a kernel counts as hung (default 180)")
    p.add_argument("--jobs", type=int, default=None,
                   help="notebooks run at a time, the cores shared between them (default: 2 on a machine "
                        "with 2 or more cores)")
    p.set_defaults(func=_cmd_course)

    p = sub.add_parser(
        "phantom", help="generate a phantom data set (nnU-Net layout with dataset.json)",
        description="Generate seeded DCE-MRI liver phantom cases and write them in the nnU-Net layout. "
        "Without --cases / --test-cases: 3 training and 2 test cases per class.",
    )
    p.add_argument("--out", required=True, help="output folder (must be empty unless --force)")
    p.add_argument("--cases", type=int, help="number of training cases (default: 3 per class)")
    p.add_argument("--test-cases", type=int, help="number of test cases (default: 2 per class)")
    p.add_argument("--seed", type=int, default=0, help="base seed; per-case seeds derive from it")
    p.add_argument("--preset", default="default",
                   help="default (128x128x24) | samples (64x64x12) | quick (48x48x8), one field of view")
    p.add_argument("--size", type=int, nargs=3, metavar=("H", "W", "S"),
                   help="matrix size; the preset's field of view is kept (voxel size changes)")
    p.add_argument("--snr", type=float, help="pre-contrast liver SNR of the Rician noise (0: no noise)")
    p.add_argument("--classes", nargs="+", metavar="CLASS",
                   help="lesion classes by name or id (default: all seven)")
    p.add_argument("--atypical-rate", type=float, help="share of atypical presentations (default 0.1)")
    p.add_argument("--dtype", choices=("int16", "float32"), default="int16",
                   help="intensity storage: scaled int16 (default, half the size) or float32")
    p.add_argument("--force", action="store_true", help="replace the data set in a non-empty --out")
    p.set_defaults(func=_cmd_phantom)

    p = sub.add_parser("dataset", help="data-set utilities")
    dsub = p.add_subparsers(dest="dataset_command", metavar="subcommand")
    q = dsub.add_parser("check", help="validate a data set and print a summary (exit 1 if invalid)")
    q.add_argument("root", help="data-set folder (with dataset.json)")
    q.add_argument("--json", action="store_true", help="print the summary as JSON")
    q.set_defaults(func=_cmd_dataset_check)

    p = sub.add_parser("site", help="the executed course as an offline website (build/site/index.html)")
    p.add_argument("--out", help="where the site goes (default build/site)")
    p.add_argument("--course-out", help="the executed notebooks: reused when they are of this commit, else "
                                        "the course runs there first (default build/course)")
    p.add_argument("--quick", action="store_true", help="from the QUICK course (fast; for checks)")
    p.add_argument("--force", action="store_true", help="replace an --out folder this command did not build")
    p.set_defaults(func=_cmd_site)

    p = sub.add_parser("import", help="convert a public data set's layout into this package's layout")
    isub = p.add_subparsers(dest="import_command", metavar="format")
    q = isub.add_parser("lld-mmri", help="LLD-MMRI 2023: <patient>/<study>/<series>.nii.gz plus the annotation "
                                         "JSON -> one case per lesion, phases on one grid, box labels")
    q.add_argument("src", help="the image folder (<patient>/<study>/<series>.nii.gz)")
    q.add_argument("--out", required=True, help="the data-set folder to write")
    q.add_argument("--annotation", help="the annotation JSON (default: the only *.json in SRC or its parent)")
    q.add_argument("--reference", default="pre", help="phase whose grid the others are resampled onto (default pre)")
    q.add_argument("--test-fraction", type=float, default=0.2, help="share of patients in the test split")
    q.add_argument("--seed", type=int, default=0, help="seed of the patient split")
    q.add_argument("--force", action="store_true", help="replace a data set already in --out")
    q.set_defaults(func=_cmd_import_lld)
    p.set_defaults(func=_usage(p))

    p = sub.add_parser("train", help="train a network (MTI-Net or a baseline) on a data set")
    p.add_argument("--config", help="YAML config file (see TrainConfig)")
    p.add_argument("--preset", choices=["quick", "course", "paper"], help="a built-in config")
    p.add_argument("--data", required=True, help="data set root (nnU-Net layout with dataset.json)")
    p.add_argument("--out", required=True, help="run folder: checkpoints, history, config")
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.pt if it exists")
    p.add_argument("--epochs", type=int, help="override the number of epochs")
    p.add_argument("--seed", type=int)
    p.add_argument("--device", help="auto | cpu | cuda | cuda:1 | mps")
    p.add_argument("--precision", choices=["auto", "bf16", "fp32"])
    p.add_argument("--deterministic", action="store_true", help="deterministic kernels (exact resume)")
    p.add_argument("--force", action="store_true", help="replace the run in OUT (its checkpoints and history)")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("evaluate", help="per-case evaluation of a checkpoint on a data set split")
    p.add_argument("--ckpt", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--split", default="test", choices=["train", "test"])
    p.add_argument("--out", help="JSON file for the per-case table and summary "
                                 "(default: evaluation_SPLIT.json beside the checkpoint)")
    p.add_argument("--device", default="auto")
    p.add_argument("--force", action="store_true", help="replace an existing --out file")
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("predict", help="segment, regress and classify one case from its phase files")
    p.add_argument("--ckpt", required=True)
    p.add_argument("--images", nargs="+", required=True, metavar="PHASE",
                   help="one NIfTI per phase, in phase order, or one 4D NIfTI with the phases last")
    p.add_argument("--times", nargs="+", type=float, help="phase times in seconds (default 0 35 70 180)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--device", default="auto")
    p.add_argument("--reference", metavar="PHASE",
                   help="phases on different grids: resample them onto this phase's grid (pre, arterial, venous, "
                        "delayed or an index) through their affines; the prediction is written on that grid")
    p.add_argument("--force", action="store_true",
                   help="replace an earlier prediction in --out, or write among the inputs (never over them)")
    p.set_defaults(func=_cmd_predict)

    p = sub.add_parser("bench", help="run the benchmarks and write docs/benchmarks.md")
    p.add_argument("--out", default="docs/benchmarks.md")
    p.add_argument("--skip-course", action="store_true", help="skip executing the notebooks (saves ~40 min)")
    p.add_argument("--force", action="store_true", help="replace an existing --out (make bench does)")
    p.set_defaults(func=_cmd_bench)

    p = sub.add_parser("results", help="train and evaluate MTI-Net, ablations and baselines over seeds")
    p.add_argument("--out", default="docs/results.md")
    p.add_argument("--preset", default="results", choices=["results", "paper"],
                   help="results: about 90 min on 2 CPU cores; paper: full size, for a GPU")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--networks", nargs="+", help="subset of the networks (default: all)")
    p.add_argument("--work", default="build/results", help="data, runs and per-run results (cached)")
    p.add_argument("--jobs", type=int, default=1,
                   help="runs trained at once, each on cores/jobs threads (make results: 2)")
    p.add_argument("--force", action="store_true", help="replace an existing --out (make results does)")
    p.set_defaults(func=_cmd_results)

    p = sub.add_parser("student", help="write student copies of the notebooks (no solutions)")
    p.add_argument("--out", default="build/student")
    p.set_defaults(func=_cmd_student)
    return parser


def one_line(text: str) -> str:
    """A message as one printable line: line breaks joined with "; ", control characters escaped."""
    text = "; ".join(part.strip() for part in str(text).splitlines() if part.strip())
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _exit_code(exc: BaseException) -> int | None:
    """The documented exit code of an expected error; ``None`` for a bug (traceback shown)."""
    from mtilib.data.io import DatasetError
    from mtilib.train.checkpoint import CheckpointError

    if isinstance(exc, UsageError):
        return 2
    if isinstance(exc, RefusedError):
        return 3
    if isinstance(exc, (DatasetError, CheckpointError, ValueError, OSError)):
        return 1
    return None


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    command = " ".join(filter(None, (args.command, getattr(args, "dataset_command", None))))
    debug = args.debug or os.environ.get("MTILIB_DEBUG", "") not in ("", "0")
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print(f"mtilib {command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        code = _exit_code(exc)
        if code is None or debug:
            if code is None:
                raise  # a bug, not an input error: the traceback is what a report needs
            import traceback

            traceback.print_exc()
        prefix = "invalid data set: " if command == "dataset check" and code == 1 else ""
        print(f"mtilib {command}: {prefix}{one_line(exc)}", file=sys.stderr)
        return code


if __name__ == "__main__":
    sys.exit(main())
