"""Before/after of issue 41 on equal terms: the daemon of a checkout (ROOT) on the default model, in
one-second slices between one-second slices of inference-only (``Engine.infer`` on the same frames,
2 threads) while the daemon is paused (SIGSTOP/SIGCONT); frames/s from its ``/health`` counter, CPU
seconds from ``/proc/<pid>/stat``. ``old``: the camera the suite used before (folder replay of
PNGs); ``new``: the in-memory camera. Prints one JSON line (interleaved-2026-12-07.jsonl).

    git worktree add OLD 849e113~1
    python benchmarks/results/frame-budget/interleaved.py OLD old 6
    python benchmarks/results/frame-budget/interleaved.py . new 6
"""
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO))

import cv2
import yaml

from benchmarks.broker import MessageCounter, Mosquitto, free_port
from benchmarks.frames import camera_frames, load_images, write_replay_frames
from benchmarks.latency import FrameLoop

MODEL = REPO / "models" / "dermnet-mnv2-trio"
IMAGES = REPO / "tests" / "fixtures" / "ham10000_mini" / "images"


def health_frames(port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as response:
        return int(json.loads(response.read())["frames"])


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def camera(kind: str, frames, tmp: Path) -> dict:
    if kind == "new":
        return {"source": "memory", "path": str(write_replay_frames(frames, tmp / "frames.npy")), "loop": True, "fps": 0}
    folder = tmp / "replay"
    folder.mkdir()
    for i, rgb in enumerate(frames):
        cv2.imwrite(str(folder / f"frame_{i:04d}.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return {"source": "folder", "path": str(folder), "loop": True, "fps": 0}


def main(root: str, kind: str, slices: int) -> dict:
    frames = camera_frames(load_images(IMAGES, 64))
    loop = FrameLoop(MODEL, frames, threads=2, warmup=20)
    with tempfile.TemporaryDirectory() as tmp, Mosquitto() as broker, \
            MessageCounter(broker.port, "dermedge/bench/result") as counter:
        port = free_port()
        config = Path(tmp) / "device.yaml"
        config.write_text(yaml.safe_dump({
            "device_id": "bench", "log_level": "WARNING", "model": {"dir": str(MODEL), "threads": 2},
            "camera": camera(kind, frames, Path(tmp)), "overlay": {"mode": "none"},
            "mqtt": {"host": "127.0.0.1", "port": broker.port}, "http": {"host": "127.0.0.1", "port": port}}))
        proc = subprocess.Popen([sys.executable, "-m", "device", "run", "--config", str(config)], cwd=root,
                                env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:  # 100 frames: warm, and the PNG replay has decoded every file
                try:
                    if health_frames(port) >= 100:
                        break
                except OSError:
                    pass
                time.sleep(0.1)
            window = frames_n = calls = 0
            calls_s = calls_cpu = daemon_cpu = 0.0
            messages0, t_start = counter.count, time.monotonic()
            for _ in range(slices):
                proc.send_signal(signal.SIGSTOP)
                try:
                    n, seconds, cpu = loop.run_for(1.0)
                finally:
                    proc.send_signal(signal.SIGCONT)
                calls, calls_s, calls_cpu = calls + n, calls_s + seconds, calls_cpu + cpu
                time.sleep(0.1)
                c0, t0, f0 = cpu_seconds(proc.pid), time.monotonic(), health_frames(port)
                time.sleep(1.0)
                c1, t1, f1 = cpu_seconds(proc.pid), time.monotonic(), health_frames(port)
                window, frames_n, daemon_cpu = window + t1 - t0, frames_n + f1 - f0, daemon_cpu + c1 - c0
            messages, elapsed = counter.count - messages0, time.monotonic() - t_start
        finally:
            proc.send_signal(signal.SIGCONT)
            proc.terminate()
            proc.wait(30)
    fps, reference = frames_n / window, calls / calls_s
    return {"kind": kind, "load": os.getloadavg()[0], "fps": fps, "inference_only_fps": reference,
            "ratio": fps / reference, "cpu_ms_daemon": daemon_cpu * 1e3 / frames_n,
            "cpu_ms_inf": calls_cpu * 1e3 / calls, "cpu_ratio": (calls_cpu / calls) / (daemon_cpu / frames_n),
            "mqtt_messages_per_s": messages / elapsed}


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], sys.argv[2], int(sys.argv[3]))))
