"""The daemon under hostile load: peak memory under worst-case uploads, and idle connections.

    python -m benchmarks.uploads [--model experiments/dermnet-edge] [--concurrency 8] [--rounds 2]
                                 [--idle 200,600] [--good 200] [--decode-memory-mb 64]
                                 [--out benchmarks/results]

One real ``python -m device run`` (folder camera on the fixture images, MQTT off, HTTP on
loopback, default http settings but ``--decode-memory-mb``). Then, in order:

1. every worst-case upload of :mod:`benchmarks.hostile` (just under and just over the decode
   budget, and the 6000x6000 bombs), ``--concurrency`` copies at once, ``--rounds`` times, while
   another thread times ``/health``; the daemon's peak RSS (kernel high-water mark) is read
   after each kind, so the report shows which kind moved it;
2. ``--good`` ordinary uploads at the same concurrency (the load held: status codes, latency);
3. for each count in ``--idle``, that many idle TCP connections (connected, nothing sent), then
   the time a fresh ``/health`` takes to answer.

Writes ``<out>/<date>-<host>-uploads.json`` and ``.md``. Exit code 1 when the peak RSS is over
``--target-mb`` (250), an upload got another status than expected, or /health waited over 1 s.
"""
from __future__ import annotations

import argparse
import json
import logging
import socket
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import date
from pathlib import Path

import requests
import yaml

from benchmarks.broker import free_port
from benchmarks.env import environment
from benchmarks.hostile import Upload, bombs, boundary_uploads
from benchmarks.memory import DeviceProcess, high_water_mark_kb
from benchmarks.stats import percentile
from device.config import HttpConfig

_log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
FIXTURE_IMAGES = REPO / "tests" / "fixtures" / "ham10000_mini" / "images"
HEALTH_LIMIT_S = 1.0


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmRSS:")) / 1024


class _HealthProbe(threading.Thread):
    """Times GET /health on a fresh connection every 50 ms until stopped."""

    def __init__(self, url: str):
        super().__init__(daemon=True)
        self.url, self.times, self.failures = url, [], 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(0.05):
            t0 = time.monotonic()
            try:
                requests.get(self.url, timeout=10).raise_for_status()
                self.times.append(time.monotonic() - t0)
            except requests.RequestException:
                self.failures += 1

    def stop(self) -> dict:
        self._stop_event.set()
        self.join()
        return {"max_s": max(self.times, default=None), "p50_s": percentile(self.times, 50) if self.times else None,
                "failures": self.failures, "probes": len(self.times)}


def _post(url: str, upload: Upload) -> tuple[int, float]:
    t0 = time.monotonic()
    response = requests.post(url, files={"image": (f"{upload.name}.img", upload.data)}, timeout=120)
    return response.status_code, time.monotonic() - t0


def hostile_round(process: DeviceProcess, base: str, uploads: list[Upload], *, concurrency: int,
                  rounds: int) -> list[dict]:
    rows = []
    with ThreadPoolExecutor(concurrency) as pool:
        for upload in uploads:
            probe = _HealthProbe(base + "/health")
            probe.start()
            results = list(pool.map(lambda u: _post(base + "/predict", u), [upload] * concurrency * rounds))
            health = probe.stop()
            codes = sorted({code for code, _ in results})
            # 503: more large images at once than the daemon decodes side by side (try again)
            allowed = {upload.expected, 503} if upload.expected == 200 else {upload.expected}
            rows.append({"name": upload.name, "size": f"{upload.width}x{upload.height}", "file_kb": len(upload.data) // 1024,
                         "estimate_mb": round(upload.cost_bytes / 2**20, 1), "expected": upload.expected,
                         "codes": codes, "as_expected": set(codes) <= allowed and upload.expected in codes,
                         "max_latency_s": round(max(t for _, t in results), 3),
                         "peak_rss_mb": round(high_water_mark_kb(process.proc.pid) / 1024, 1),
                         "health_max_s": round(health["max_s"], 3) if health["max_s"] else None})
            _log.info("%s: %s", upload.name, rows[-1])
    return rows


def good_load(base: str, jpeg: bytes, *, count: int, concurrency: int) -> dict:
    upload = Upload("fixture", jpeg, 0, 0, 0, 200)
    t0 = time.monotonic()
    with ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(lambda u: _post(base + "/predict", u), [upload] * count))
    seconds = time.monotonic() - t0
    latencies = [t for _, t in results]
    codes = [code for code, _ in results]
    return {"uploads": count, "concurrency": concurrency, "ok": codes.count(200),
            "5xx": sum(code >= 500 for code in codes), "per_s": round(count / seconds, 1),
            "p50_ms": round(percentile(latencies, 50) * 1e3, 1), "p99_ms": round(percentile(latencies, 99) * 1e3, 1)}


def idle_connections(port: int, count: int) -> dict:
    """Open ``count`` idle connections, then time /health; closes them again."""
    socks = []
    try:
        for _ in range(count):
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            socks.append(sock)
        time.sleep(0.5)  # let the server accept what it will
        t0 = time.monotonic()
        try:
            ok = requests.get(f"http://127.0.0.1:{port}/health", timeout=60).status_code == 200
        except requests.RequestException:
            ok = False
        return {"idle": count, "health_s": round(time.monotonic() - t0, 3), "health_ok": ok}
    finally:
        for sock in socks:
            sock.close()


def run(model: Path, *, concurrency: int, rounds: int, idle: list[int], good: int, decode_memory_mb: float,
        workdir: Path) -> dict:
    budget = int(decode_memory_mb * 2**20)
    uploads = boundary_uploads(budget) + bombs(budget)
    port = free_port()
    config = {"device_id": "bench-uploads", "log_level": "WARNING", "model": {"dir": str(model), "threads": 2},
              "camera": {"source": "folder", "path": str(FIXTURE_IMAGES), "fps": 5.0}, "overlay": {"mode": "none"},
              "mqtt": {"enabled": False},
              "http": {"host": "127.0.0.1", "port": port, "decode_memory_mb": decode_memory_mb}}
    path = workdir / "device.yaml"
    path.write_text(yaml.safe_dump(config))
    base = f"http://127.0.0.1:{port}"
    jpeg = next(FIXTURE_IMAGES.iterdir()).read_bytes()
    with DeviceProcess(["run", "--config", str(path)]) as process:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if requests.get(base + "/health", timeout=2).json().get("frames", 0) >= 2:
                    break
            except requests.RequestException:
                pass
            time.sleep(0.2)
        else:
            raise RuntimeError("daemon did not start classifying within 120 s")
        for _ in range(20):  # warm every code path an ordinary upload takes
            _post(base + "/predict", Upload("warm", jpeg, 0, 0, 0, 200))
        baseline = {"rss_mb": round(_rss_mb(process.proc.pid), 1),
                    "peak_rss_mb": round(high_water_mark_kb(process.proc.pid) / 1024, 1)}
        hostile = hostile_round(process, base, uploads, concurrency=concurrency, rounds=rounds)
        load = good_load(base, jpeg, count=good, concurrency=concurrency)
        idle_rows = [idle_connections(port, n) for n in idle]
        peak = round(high_water_mark_kb(process.proc.pid) / 1024, 1)
    shown = model.resolve().relative_to(REPO) if model.resolve().is_relative_to(REPO) else model
    return {"date": date.today().isoformat(), "environment": environment(), "model": str(shown),
            "decode_memory_mb": decode_memory_mb, "connection_limit": HttpConfig.connection_limit,
            "idle_timeout_s": HttpConfig.idle_timeout_s, "threads": HttpConfig.threads,
            "concurrency": concurrency, "rounds": rounds, "baseline": baseline, "hostile": hostile,
            "peak_rss_mb": peak, "good_load": load, "idle": idle_rows}


def markdown(results: dict, target_mb: float) -> str:
    env = results["environment"]
    lines = [f"# Hostile uploads and idle connections, {results['date']}", "",
             (f"Machine: {env.get('cpu', 'n/a')}; model `{results['model']}`; daemon defaults: "
             f"http.decode_memory_mb {results['decode_memory_mb']:g}, threads {results['threads']}, "
             f"connection_limit {results['connection_limit']}, idle_timeout_s {results['idle_timeout_s']}."), "",
             (f"Reproduce: `python -m benchmarks.uploads --concurrency {results['concurrency']} "
             f"--rounds {results['rounds']} --decode-memory-mb {results['decode_memory_mb']:g}`"), "",
             (f"**Peak RSS {results['peak_rss_mb']} MB** (target <= {target_mb:g} MB); after start-up and 20 "
             f"ordinary uploads: RSS {results['baseline']['rss_mb']} MB, peak {results['baseline']['peak_rss_mb']} MB."),
             "", f"## {results['concurrency']} at once, {results['rounds']} rounds, per kind (in this order)", "",
             "| upload | size | file | estimate | expected | got | slowest | /health max | peak RSS after |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in results["hostile"]:
        health = "n/a" if r["health_max_s"] is None else f"{r['health_max_s']} s"  # over before a probe
        lines.append(f"| {r['name']} | {r['size']} | {max(r['file_kb'], 1)} KB | {r['estimate_mb']} MB | "
                     f"{r['expected']} | {','.join(map(str, r['codes']))} | {r['max_latency_s']} s | {health} | "
                     f"{r['peak_rss_mb']} MB |")
    lines += ["", ("503: more large images at once than the daemon decodes side by side (half the server "
              "threads); the client is told to try again (Retry-After).")]
    g = results["good_load"]
    lines += ["", "## Load held (ordinary fixture JPEG uploads)", "",
              (f"{g['uploads']} uploads at concurrency {g['concurrency']}: {g['ok']} answered 200, {g['5xx']} 5xx, "
              f"{g['per_s']} uploads/s, p50 {g['p50_ms']} ms, p99 {g['p99_ms']} ms."), "",
              "## Idle connections (connected, nothing sent), then a fresh /health", "",
              "| idle connections | /health answered in | ok |", "|---|---|---|"]
    lines += [f"| {r['idle']} | {r['health_s']} s | {r['health_ok']} |" for r in results["idle"]]
    lines += ["", (f"Beyond connection_limit ({results['connection_limit']}) the server accepts nothing until its "
              f"idle sweep closes connections idle for idle_timeout_s ({results['idle_timeout_s']} s); per-client "
              "limits in front of it are the reverse proxy's job (`install.sh --tls`).")]
    return "\n".join(lines) + "\n"


def failures(results: dict, target_mb: float, connection_limit: int) -> list[str]:
    problems = [f"{r['name']}: got {r['codes']}, expected {r['expected']} (200 may come with 503)"
                for r in results["hostile"]
                if not r["as_expected"]]
    if results["peak_rss_mb"] > target_mb:
        problems.append(f"peak RSS {results['peak_rss_mb']} MB is over {target_mb:g} MB")
    if results["good_load"]["5xx"]:
        problems.append(f"{results['good_load']['5xx']} ordinary uploads got a 5xx")
    problems += [f"{r['idle']} idle connections: /health took {r['health_s']} s" for r in results["idle"]
                 if r["idle"] < connection_limit and (not r["health_ok"] or r["health_s"] > HEALTH_LIMIT_S)]
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.uploads", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=REPO / "experiments" / "dermnet-edge")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--idle", type=lambda t: [int(v) for v in t.split(",")], default=[200, 600])
    parser.add_argument("--good", type=int, default=200)
    parser.add_argument("--decode-memory-mb", type=float, default=HttpConfig.decode_memory_mb)
    parser.add_argument("--target-mb", type=float, default=250.0)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = parser.parse_args(argv)
    logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    with tempfile.TemporaryDirectory() as tmp:
        results = run(args.model, concurrency=args.concurrency, rounds=args.rounds, idle=args.idle, good=args.good,
                      decode_memory_mb=args.decode_memory_mb, workdir=Path(tmp))
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"{results['date']}-{socket.gethostname().split('.')[0]}-uploads"
    stem.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
    stem.with_suffix(".md").write_text(markdown(results, args.target_mb))
    print(f"report: {stem.with_suffix('.md')}")
    problems = failures(results, args.target_mb, HttpConfig.connection_limit)
    for problem in problems:
        print(f"fail: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
