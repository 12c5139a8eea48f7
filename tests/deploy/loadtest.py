"""Load test of ``POST /predict``: N requests from C concurrent clients against a running daemon.

    # start a headless daemon on the fixture images and load it (from the repository root):
    python -m tests.deploy.loadtest --model experiments/dermnet-edge [--rounds 3]
    # or load a daemon that is already running (its pid gives the RSS figures):
    python -m tests.deploy.loadtest --url http://127.0.0.1:5000 --pid 1234 [--token T]

Prints one JSON object: the status codes, the 5xx and connection-error counts, client-side
latency percentiles, throughput and the daemon's RSS before and after. A measurement, not a
test: nothing here passes or fails on speed (exit 1 only on a 5xx or a failed request).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

from tests.deploy.daemon_process import REPO, DaemonProcess, daemon_config

FIXTURE_IMAGES = REPO / "tests" / "fixtures" / "ham10000_mini" / "images"


def rss_mib(pid: int) -> float:
    """Resident set size of a process from /proc (Linux), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    rank = max(1, min(len(sorted_values), round(q / 100 * len(sorted_values) + 0.5)))
    return sorted_values[rank - 1]


def fire(url: str, images: list[bytes], *, requests_total: int, concurrency: int, token: str | None) -> dict:
    """POST ``requests_total`` uploads (cycling through ``images``) from ``concurrency`` threads."""
    local = threading.local()
    headers = {"Authorization": f"Bearer {token}"} if token else {}

    def one(i: int) -> tuple[int | str, float]:
        if not hasattr(local, "session"):
            local.session = requests.Session()
        started = time.perf_counter()
        try:
            response = local.session.post(
                f"{url}/predict",
                headers=headers,
                timeout=60,
                files={"image": (f"{i}.jpg", images[i % len(images)], "image/jpeg")},
            )
            status: int | str = response.status_code
        except requests.RequestException as err:
            status = type(err).__name__
        return status, (time.perf_counter() - started) * 1000

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        outcomes = list(pool.map(one, range(requests_total)))
    wall = time.perf_counter() - started
    latencies = sorted(ms for _, ms in outcomes)
    codes = Counter(str(status) for status, _ in outcomes)
    return {
        "requests": requests_total,
        "concurrency": concurrency,
        "status_codes": dict(sorted(codes.items())),
        "http_5xx": sum(n for code, n in codes.items() if code.startswith("5")),
        "failed_requests": sum(n for code, n in codes.items() if not code.isdigit()),
        "latency_ms": {
            "p50": round(percentile(latencies, 50), 1),
            "p95": round(percentile(latencies, 95), 1),
            "p99": round(percentile(latencies, 99), 1),
            "max": round(latencies[-1], 1),
            "mean": round(statistics.fmean(latencies), 1),
        },
        "wall_s": round(wall, 2),
        "requests_per_s": round(requests_total / wall, 1),
    }


def run(
    url: str,
    pid: int | None,
    *,
    requests_total: int,
    concurrency: int,
    rounds: int,
    token: str | None,
    images_dir: Path,
) -> dict:
    """``rounds`` loads of ``requests_total`` requests; the RSS is read before and after each."""
    images = [p.read_bytes() for p in sorted(images_dir.glob("*.jpg"))]
    if not images:
        raise SystemExit(f"no .jpg images in {images_dir}")
    rss = [round(rss_mib(pid), 1)] if pid else []
    reports = []
    for _ in range(rounds):
        reports.append(fire(url, images, requests_total=requests_total, concurrency=concurrency, token=token))
        if pid:
            rss.append(round(rss_mib(pid), 1))
    report = reports[0] if rounds == 1 else {"rounds": reports}
    report["http_5xx"] = sum(r["http_5xx"] for r in reports)
    report["failed_requests"] = sum(r["failed_requests"] for r in reports)
    report["rss_mib"] = {"before": rss[0], "after_each_round": rss[1:]} if pid else None
    report["health_after"] = requests.get(f"{url}/health", timeout=10).json()
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--model", type=Path, help="start a headless daemon with this model folder")
    target.add_argument("--url", type=str, help="a running daemon, e.g. http://127.0.0.1:5000")
    parser.add_argument(
        "--pid", type=int, default=None, help="the running daemon's pid, for RSS (with --url)"
    )
    parser.add_argument("--token", type=str, default=None, help="bearer token (with --url)")
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=1, help="repeat the load; RSS after each shows a leak")
    parser.add_argument("--threads", type=int, default=2, help="interpreter threads of the started daemon")
    parser.add_argument("--images", type=Path, default=FIXTURE_IMAGES, help="JPEG uploads, cycled")
    args = parser.parse_args(argv)

    options = {
        "requests_total": args.requests,
        "concurrency": args.concurrency,
        "rounds": args.rounds,
        "images_dir": args.images,
    }
    if args.url:
        report = run(args.url.rstrip("/"), args.pid, token=args.token, **options)
    else:
        with tempfile.TemporaryDirectory(prefix="dermedge-load-") as workdir:
            config = daemon_config(args.model.resolve(), FIXTURE_IMAGES, device_id="loadtest")
            config["model"]["threads"] = args.threads
            daemon = DaemonProcess(Path(workdir), config).start()
            try:
                daemon.wait_running()
                report = run(daemon.base, daemon.proc.pid, token=None, **options)
            finally:
                daemon.stop()
    print(json.dumps(report, indent=2))
    return 1 if report["http_5xx"] or report["failed_requests"] else 0


if __name__ == "__main__":
    sys.exit(main())
