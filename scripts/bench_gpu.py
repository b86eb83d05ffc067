"""GPU benchmark in one short run: ``python scripts/bench_gpu.py [--out docs/benchmarks_gpu.md]``.

The same measurements as ``make bench`` on CUDA: training throughput of MTI-Net and the early-fusion
U-Net in fp32, bf16 autocast + channels_last, and bf16 + channels_last + ``torch.compile``; the
achieved FLOP/s against the card's bf16 and fp32 matmul peaks; per-case inference latency of the
shipped checkpoint; peak GPU memory of each. About 5 minutes on a current data-centre GPU.
``--device cpu`` runs the same script on a CPU (a smoke test; the numbers are then the CPU's).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mtilib.bench import machine_line, run_isolated, setting_label  # noqa: E402
from mtilib.tables import markdown_table  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "docs" / "benchmarks_gpu.md"))
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--width", type=int, default=32, help="network width (32 is the default MTI-Net)")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile rows")
    parser.add_argument("--matmul-size", type=int,
                        help="side of the square matmul that measures the peak (default 8192 on a GPU, 1024 on a CPU)")
    parser.add_argument("--inference-presets", nargs="*", default=["samples", "default"],
                        help="phantom presets of the per-case inference rows (none: skip them)")
    args = parser.parse_args(argv)
    if args.matmul_size is not None and args.matmul_size < 1:
        parser.error(f"--matmul-size must be a positive number of rows, got {args.matmul_size}")
    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("no CUDA device: run with --device cpu for a smoke test", file=sys.stderr)
        return 2
    started = time.perf_counter()
    variants = [("fp32", False, False), ("bf16", True, False)]
    if not args.no_compile:
        variants.append(("bf16", True, True))
    matmul_size = args.matmul_size if args.matmul_size is not None else (8192 if args.device != "cpu" else 1024)
    peaks = {dt: run_isolated("matmul", n=matmul_size, device=args.device, dtype=dt, repeats=args.repeats)
             for dt in ("fp32", "bf16")}
    rows = []
    for arch in ("mtinet", "unet"):
        base = None
        for precision, channels_last, compiled in variants:
            r = run_isolated("train_step", arch=arch, width=args.width, batch=args.batch, size=args.size,
                             precision=precision, channels_last=channels_last, compile=compiled,
                             repeats=args.repeats, device=args.device)
            base = base or r
            peak = peaks["bf16" if precision == "bf16" else "fp32"]["gflops"]
            variant = setting_label(precision, channels_last) + (" + compile" if compiled else "")
            rows.append({
                "network": arch,
                "variant": variant,
                "samples/s": r["samples_per_s"], "speed vs fp32": r["samples_per_s"] / base["samples_per_s"],
                "TFLOP/s": r["achieved_gflops"] / 1e3, "of matmul peak": r["achieved_gflops"] / peak,
                "peak GPU memory (MB)": r["peak_cuda_mb"],
            })
    checkpoint = ROOT / "data_samples" / "checkpoints" / "mtinet_course.pt"
    inference = [run_isolated("inference", checkpoint=str(checkpoint), preset=p, device=args.device)
                 for p in args.inference_presets] if checkpoint.exists() else []
    lines = [
        "# GPU benchmarks", "",
        f"Written by `python scripts/bench_gpu.py --device {args.device}` on {time.strftime('%Y-%m-%d')} in "
        f"{(time.perf_counter() - started) / 60:.1f} minutes. Machine: {machine_line()}"
        + (f", {torch.cuda.get_device_name()}" if args.device.startswith("cuda") else "") + ".", "",
        f"Training step of MTI-Net (width {args.width}; 32 is the default) and the early-fusion U-Net, "
        f"batch {args.batch} at "
        f"{args.size}², median of {args.repeats}. Matmul peaks: fp32 {peaks['fp32']['gflops'] / 1e3:.1f} TFLOP/s, "
        f"bf16 {peaks['bf16']['gflops'] / 1e3:.1f} TFLOP/s.", "",
        markdown_table(rows, floatfmt=".3g"), "",
    ]
    if inference:
        lines += ["## Per-case inference (shipped checkpoint)", "",
                  markdown_table([{"case (P, H, W, S)": str(tuple(r["shape"])), "seconds": r["median_s"]}
                                  for r in inference], floatfmt=".3g"), ""]
    Path(args.out).write_text("\n".join(lines))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
