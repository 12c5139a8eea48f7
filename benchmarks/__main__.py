"""Benchmark every model in a models folder on this machine and write the report.

    python -m benchmarks [--models-dir models] [--data ROOT] [--quick] [--threads 1,2,4] [--repeats 5]
                         [--out benchmarks/results] [--skip daemon,memory,accuracy,baseline]

Writes ``<out>/<date>-<host>.json``, ``<date>-<host>.md`` and ``<date>-<host>-latency.png``
(``-quick`` is added to the name in quick mode). Exit code 0 when every section ran or was
skipped for a stated reason, 1 when a section failed (the report still records the rest), 2 for
bad arguments or an unusable models folder.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from device.card import CardError


def _int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from err
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return tuple(sorted(set(values)))


def _names(text: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in text.split(",") if v.strip())


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from benchmarks.report import write_report  # after the TF log level is set
    from benchmarks.suite import SECTIONS, BenchOptions, default_threads, run_suite

    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0])
    parser.add_argument("--models-dir", type=Path, default=Path("models"), help="folder of <name>/card.json models")
    parser.add_argument("--data", type=Path, default=None, help="HAM10000 root for the accuracy section")
    parser.add_argument("--quick", action="store_true", help="smoke mode: few iterations (tests)")
    parser.add_argument("--threads", type=_int_list, default=None,
                        help=f"interpreter thread counts (default here: {','.join(map(str, default_threads()))})")
    parser.add_argument("--repeats", type=int, default=None, help="runs per measurement (default 5, quick 2)")
    parser.add_argument("--daemon-threads", type=int, default=None, help="model.threads for the daemon run")
    parser.add_argument("--images", type=Path, default=None, help="folder of images to time on")
    parser.add_argument("--cache-dir", type=Path, default=Path("cache"), help="decoded-pixel cache for accuracy")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"), help="where the report goes")
    parser.add_argument("--skip", type=_names, default=(), help=f"sections to leave out: {','.join(SECTIONS)}")
    parser.add_argument("--log-level", type=str, default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    overrides = {"threads": args.threads, "images": args.images, "daemon_threads": args.daemon_threads,
                 "repeats": args.repeats if args.repeats is not None else (2 if args.quick else 5)}
    try:
        options = BenchOptions(models_dir=args.models_dir, data=args.data, quick=args.quick, out=args.out,
                               cache_dir=args.cache_dir, skip=args.skip,
                               **{k: v for k, v in overrides.items() if v is not None})
        results = run_suite(options)
    except (ValueError, FileNotFoundError, CardError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    paths = write_report(results, options.out)
    for kind, path in paths.items():
        print(f"{kind}: {path}")
    for error in results["errors"]:
        print(f"error: {error}", file=sys.stderr)
    return 1 if results["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
