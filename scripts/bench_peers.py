"""MONAI's BasicUNet against our networks: training-step speed, for docs/benchmarks.md.

``make bench`` writes its section "Step speed against MONAI BasicUNet".

MONAI is a benchmark/test-only dependency (the ``bench`` extra): ``mtilib`` never imports it, so the
MONAI side lives here and ``mtilib.bench.peer_comparison`` runs this script once per measurement, in
a fresh process, so that each peak resident memory is its own::

    python scripts/bench_peers.py --one basicunet --kwargs '{"width": 16, "size": 64, "batch": 16}'  # JSON
    python scripts/bench_peers.py                # the whole section (both sizes), as markdown
    python scripts/bench_peers.py --tiny         # the same at width 4, 32², batch 2, one repeat (seconds)
"""

from __future__ import annotations

import argparse
import json
import sys

from mtilib.bench import PEER_SIZES

#: Exit status of ``--one`` when MONAI is not installed.
NO_MONAI = 3


def build_basicunet(width: int, in_channels: int = 4, out_channels: int = 3):
    """BasicUNet with our stage widths: ``features=(w, w, 2w, 4w, 8w, w)`` (five encoder levels, the
    last value after the final up-sampling). Maps ``x (B, 4, H, W)`` to logits ``(B, 3, H, W)``;
    ``H`` and ``W`` must be multiples of 16 (four poolings)."""
    from monai.networks.nets import BasicUNet

    w = width
    return BasicUNet(spatial_dims=2, in_channels=in_channels, out_channels=out_channels,
                     features=(w, w, 2 * w, 4 * w, 8 * w, w))


def measure_basicunet(width: int = 16, batch: int = 16, size: int = 64, precision: str = "fp32",
                      channels_last: bool = False, repeats: int = 5, device: str = "cpu") -> dict:
    """One training step of :func:`build_basicunet` timed by ``mtilib.bench.measure_step_of``."""
    from mtilib.bench import measure_step_of

    result = measure_step_of(lambda: build_basicunet(width), batch=batch, size=size, precision=precision,
                             channels_last=channels_last, repeats=repeats, device=device)
    return {**result, "network": "basicunet", "width": width}


ONE = {"basicunet": measure_basicunet}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--one", choices=sorted(ONE), help="one measurement; prints its result as JSON")
    parser.add_argument("--kwargs", default="{}", help="keyword arguments of the measurement, as JSON")
    parser.add_argument("--sizes", nargs="+", default=None, choices=sorted(PEER_SIZES),
                        help="labels of mtilib.bench.PEER_SIZES (default: all)")
    parser.add_argument("--tiny", action="store_true", help="a rehearsal at width 4, 32², batch 2, one repeat")
    args = parser.parse_args(argv)
    try:
        kwargs = json.loads(args.kwargs)
    except json.JSONDecodeError as exc:
        parser.error(f"--kwargs is not valid JSON ({exc})")

    if args.one:
        try:
            import monai  # noqa: F401
        except ImportError:
            print("MONAI is not installed: pip install -e '.[bench]'", file=sys.stderr)
            return NO_MONAI
        print(json.dumps(ONE[args.one](**kwargs)))
        return 0

    from mtilib.bench import peer_comparison, run_isolated

    if args.tiny:
        sizes, repeats, rounds, peak = {"tiny": (4, 32, 2)}, 1, 1, run_isolated("matmul", n=256, repeats=1)
    else:
        sizes = {k: PEER_SIZES[k] for k in (args.sizes or PEER_SIZES)}
        repeats, rounds, peak = 5, 3, run_isolated("matmul", n=2048, repeats=5)
    title, command, text, table = peer_comparison(peak["gflops"], sizes, repeats=repeats, rounds=rounds,
                                                  log=lambda m: print(m, file=sys.stderr))
    print("\n".join([f"## {title}", "", f"Command: {command}.", "", text, "", table]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
