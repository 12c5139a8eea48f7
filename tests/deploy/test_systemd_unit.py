"""The systemd unit and the Pi install scripts.

The unit is checked by systemd's own ``systemd-analyze verify`` and ``security`` on a copy whose
ExecStart points at this interpreter (the Pi's venv does not exist here). install.sh and
uninstall.sh run for real in their staging mode (``DESTDIR``): files are written under a temp
folder, and the commands that would change the system are printed instead, so the machine
running the tests is never touched.
"""

from __future__ import annotations

import configparser
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement

REPO = Path(__file__).parents[2]
SYSTEMD_DIR = REPO / "device" / "systemd"
UNIT = SYSTEMD_DIR / "dermedge.service"
INSTALL = SYSTEMD_DIR / "install.sh"
UNINSTALL = SYSTEMD_DIR / "uninstall.sh"
PI_VENV_PYTHON = "/opt/dermedge/venv/bin/python"
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
needs_systemd_analyze = pytest.mark.skipif(
    SYSTEMD_ANALYZE is None, reason="systemd-analyze missing (apt-get install systemd)"
)


def unit_sections() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=True, interpolation=None)
    parser.optionxform = str  # systemd keys are case-sensitive
    parser.read_string(UNIT.read_text())
    return parser


@pytest.fixture
def runnable_unit(tmp_path) -> Path:
    """A copy of the unit whose ExecStart runs this interpreter instead of the Pi's venv."""
    text = UNIT.read_text()
    assert PI_VENV_PYTHON in text
    copy = tmp_path / UNIT.name
    copy.write_text(text.replace(PI_VENV_PYTHON, sys.executable))
    return copy


def systemd_analyze(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([SYSTEMD_ANALYZE, *args], check=False, capture_output=True, text=True, timeout=60)


@needs_systemd_analyze
def test_systemd_analyze_verify_passes_without_a_warning(runnable_unit):
    proc = systemd_analyze("verify", str(runnable_unit))
    assert proc.returncode == 0 and not proc.stderr.strip(), proc.stderr


@needs_systemd_analyze
@pytest.mark.parametrize(
    ("good", "bad"), [("Type=notify", "Type=notifyy"), ("WatchdogSec=", "WatchdogSecs=")]
)
def test_systemd_analyze_verify_would_catch_a_broken_unit(runnable_unit, good, bad):
    runnable_unit.write_text(runnable_unit.read_text().replace(good, bad))
    proc = systemd_analyze("verify", str(runnable_unit))
    assert bad.split("=")[0 if bad.endswith("=") else 1] in proc.stderr


@needs_systemd_analyze
def test_hardening_keeps_the_exposure_low(runnable_unit):
    # systemd rates exposure 0 (locked down) to 10 (unprotected); --threshold is that times 10.
    proc = systemd_analyze("security", "--offline=yes", "--threshold=30", str(runnable_unit))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr


def test_unit_is_a_watchdogged_notify_service_with_reload_and_hardening():
    unit = unit_sections()
    service = unit["Service"]
    assert service["Type"] == "notify" and service["NotifyAccess"] == "main"
    assert int(service["WatchdogSec"]) > 0
    assert service["Restart"] == "on-failure"
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert service["ExecStart"] == f"{PI_VENV_PYTHON} -m device run --config /etc/dermedge/device.yaml"
    assert service["WorkingDirectory"] == "/opt/dermedge"  # relative model.dir resolves under it
    assert service["User"] == "dermedge" and "video" in service["SupplementaryGroups"].split()
    for key, value in {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "StateDirectory": "dermedge",
    }.items():
        assert service[key] == value, key
    assert "PrivateDevices" not in service  # the camera and the DRM screen must stay visible
    assert "ReadWritePaths" not in service  # the state directory is the only writable place
    assert service["StandardOutput"] == "journal"
    assert unit["Install"]["WantedBy"] == "multi-user.target"


def _megabytes(value: str) -> float:
    number, unit = float(value[:-1]), value[-1]
    return number * {"K": 1 / 1024, "M": 1, "G": 1024}[unit]


def test_unit_caps_memory_below_what_a_1_gb_pi_can_spare():
    service = unit_sections()["Service"]
    high, ceiling = _megabytes(service["MemoryHigh"]), _megabytes(service["MemoryMax"])
    # above the benchmarked peak under hostile uploads (<= 250 MB target), so the kernel does
    # not throttle normal work; at most half of a 1 GB Pi, so the kill comes before the OOM killer's
    assert 250 <= high < ceiling <= 512
    assert int(service["LimitNOFILE"]) >= 512 + 128  # http.connection_limit's default + spares


def test_unit_paths_match_the_install_script():
    common = (SYSTEMD_DIR / "common.sh").read_text()
    values = dict(re.findall(r"^(\w+)=(\S+)$", common, re.MULTILINE))
    service = unit_sections()["Service"]
    assert service["WorkingDirectory"] == values["APP_DIR"]
    assert service["ExecStart"].startswith(f"{values['APP_DIR']}/venv/bin/python ")
    assert f"--config {values['CONF_DIR']}/device.yaml" in service["ExecStart"]
    assert service["User"] == values["SERVICE_USER"] and values["UNIT"] == UNIT.name
    assert f"/var/lib/{service['StateDirectory']}" == values["STATE_DIR"]


# --- requirements ---------------------------------------------------------------------------


def requirements(path: Path) -> list[Requirement]:
    lines = (line.split("#")[0].strip() for line in path.read_text().splitlines())
    return [Requirement(line) for line in lines if line and not line.startswith("-")]


@pytest.mark.parametrize(("python", "numpy_2_allowed"), [("3.11", False), ("3.13", True)])
def test_pi_requirements_keep_apt_numpy_on_bookworm(python, numpy_2_allowed):
    env = {"python_version": python, "platform_machine": "aarch64", "sys_platform": "linux"}
    active = {
        req.name: req
        for req in requirements(REPO / "requirements" / "pi.txt")
        if req.marker is None or req.marker.evaluate(env)
    }
    assert active["numpy"].specifier.contains("2.2.0") is numpy_2_allowed
    assert active["numpy"].specifier.contains("1.24.2")  # Bookworm's python3-numpy
    assert (
        "ml_dtypes" in active and not active["ml_dtypes"].specifier.contains("0.6.0")
    ) is not numpy_2_allowed
    assert not any(name.startswith("opencv") for name in active)  # apt's python3-opencv is used
    device = {req.name: req for req in requirements(REPO / "requirements" / "device.txt")}
    assert str(active["ai-edge-litert"].specifier) == str(device["ai-edge-litert"].specifier)
    # signed models: apt's python3-cryptography (Bookworm 38.0.4, Trixie 43) must satisfy pip
    assert active["cryptography"].specifier.contains("38.0.4") and "cryptography" in device


# --- install.sh / uninstall.sh in staging mode ------------------------------------------------------


def run_script(script: Path, destdir: Path, *args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        ["bash", str(script), *args],
        env={**os.environ, "DESTDIR": str(destdir)},
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def tree_digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture
def models(tmp_path) -> Path:
    """A models folder with one model (install.sh only copies it; the engine is not involved)."""
    model = tmp_path / "models" / "pi-model"
    model.mkdir(parents=True)
    (model / "card.json").write_text('{"name": "pi-model"}\n')
    (model / "model_int8.tflite").write_bytes(b"v1")
    (tmp_path / "models" / "not-a-model").mkdir()  # no card.json: skipped
    return tmp_path / "models"


@pytest.fixture
def system_untouched():
    """The real install locations look the same before and after the test."""
    paths = [Path("/opt/dermedge"), Path("/etc/dermedge"), Path("/etc/systemd/system/dermedge.service")]
    before = [p.exists() for p in paths]
    yield
    assert [p.exists() for p in paths] == before


def test_install_stages_code_models_config_and_unit(tmp_path, models, system_untouched):
    dest = tmp_path / "root"
    out = run_script(INSTALL, dest, "--models", str(models)).stdout
    app = dest / "opt" / "dermedge"
    assert (app / "device" / "daemon.py").read_bytes() == (REPO / "device" / "daemon.py").read_bytes()
    assert not list(app.rglob("__pycache__"))
    assert (app / "requirements" / "pi.txt").read_bytes() == (REPO / "requirements" / "pi.txt").read_bytes()
    assert (app / "models" / "pi-model" / "model_int8.tflite").read_bytes() == b"v1"
    assert not (app / "models" / "not-a-model").exists()
    config = dest / "etc" / "dermedge" / "device.yaml"
    assert config.read_bytes() == (REPO / "device" / "config.example.yaml").read_bytes()
    assert config.stat().st_mode & 0o777 == 0o640  # may hold the MQTT password and the HTTP token
    assert (dest / "etc" / "systemd" / "system" / UNIT.name).read_bytes() == UNIT.read_bytes()

    would = [line.removeprefix("would run: ") for line in out.splitlines() if line.startswith("would run: ")]
    assert any(
        line.startswith("env DEBIAN_FRONTEND=noninteractive apt-get install")
        and "python3-opencv" in line
        and "python3-picamera2" in line
        and "python3-cryptography" in line
        and "nginx" not in line  # only with --tls
        for line in would
    ), would
    assert "python3 -m venv --system-site-packages /opt/dermedge/venv" in would
    assert "/opt/dermedge/venv/bin/pip install -q -r /opt/dermedge/requirements/pi.txt" in would
    assert any(line.startswith("usermod -a -G video dermedge") for line in would) or not _group_exists(
        "video"
    )
    assert [
        "systemctl daemon-reload",
        "systemctl enable dermedge.service",
        "systemctl restart dermedge.service",
    ] == [line for line in would if line.startswith("systemctl")]


def _group_exists(name: str) -> bool:
    return subprocess.run(["getent", "group", name], check=False, capture_output=True).returncode == 0


def test_reinstall_never_overwrites_the_config_and_is_idempotent(tmp_path, models, system_untouched):
    dest = tmp_path / "root"
    run_script(INSTALL, dest, "--models", str(models))
    config = dest / "etc" / "dermedge" / "device.yaml"
    config.write_text("device_id: my-pi\nhttp:\n  token: owner-secret\n")  # the owner's edits
    stale = dest / "opt" / "dermedge" / "device" / "removed_upstream.py"
    stale.write_text("")
    (models / "pi-model" / "model_int8.tflite").write_bytes(b"v2")  # a newer model ships

    out = run_script(INSTALL, dest, "--models", str(models)).stdout
    assert config.read_text() == "device_id: my-pi\nhttp:\n  token: owner-secret\n"
    assert "kept the existing config" in out
    example = dest / "etc" / "dermedge" / "device.yaml.example"
    assert example.read_bytes() == (REPO / "device" / "config.example.yaml").read_bytes()
    assert not stale.exists()
    assert (dest / "opt" / "dermedge" / "models" / "pi-model" / "model_int8.tflite").read_bytes() == b"v2"

    staged = tree_digest(dest)
    run_script(INSTALL, dest, "--models", str(models))
    assert tree_digest(dest) == staged


def test_uninstall_keeps_config_and_state_unless_purged(tmp_path, models, system_untouched):
    dest = tmp_path / "root"
    run_script(INSTALL, dest, "--models", str(models))
    out = run_script(UNINSTALL, dest).stdout
    assert not (dest / "opt" / "dermedge").exists()
    assert not (dest / "etc" / "systemd" / "system" / UNIT.name).exists()
    assert (dest / "etc" / "dermedge" / "device.yaml").exists()
    assert "would run: systemctl disable --now dermedge.service" in out
    run_script(UNINSTALL, dest, "--purge")
    assert not (dest / "etc" / "dermedge").exists()


@pytest.mark.parametrize("script", [INSTALL, UNINSTALL], ids=["install", "uninstall"])
def test_scripts_refuse_unknown_options(tmp_path, script):
    proc = subprocess.run(
        ["bash", str(script), "--frobnicate"],
        env={**os.environ, "DESTDIR": str(tmp_path)},
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0 and "--frobnicate" in proc.stderr


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root to drop to nobody"
)
def test_install_without_destdir_needs_root(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "DESTDIR"}
    # nobody cannot read a checkout under a private folder (a 0700 mktemp dir, say), so it runs
    # a world-readable copy of the two scripts, laid out as in the repository.
    public = Path(tempfile.mkdtemp(prefix="dermedge-install-"))
    scripts = public / "device" / "systemd"
    scripts.mkdir(parents=True)
    for name in ("install.sh", "common.sh"):
        shutil.copy(INSTALL.parent / name, scripts / name)
    for path in (public, public / "device", scripts, *scripts.iterdir()):
        path.chmod(0o755)
    proc = subprocess.run(
        ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "bash", str(scripts / "install.sh")],
        env=env,
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    shutil.rmtree(public)
    assert proc.returncode != 0 and "run as root" in proc.stderr
