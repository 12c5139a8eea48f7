"""install.sh ships the browser app: with no web/dist built, it builds one in a scratch folder
(npm ci, node build.mjs) for the default model and installs it where the daemon serves /app/.

Staged with DESTDIR, as tests/deploy/test_systemd_unit.py runs the script; the build is real.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

from flask import Flask

from device.config import default_model_dir
from device.webapp import register_web_app

REPO = Path(__file__).resolve().parents[2]
INSTALL = REPO / "device" / "systemd" / "install.sh"


def test_install_builds_and_ships_the_browser_app(tmp_path, web_deps):
    models = tmp_path / "models"
    shipped = REPO / default_model_dir()
    shutil.copytree(shipped, models / shipped.name)
    (models / "DEFAULT").write_text(f"{shipped.name}\n")
    dest = tmp_path / "root"
    proc = subprocess.run(["bash", str(INSTALL), "--models", str(models), "--no-start"], check=False,
                          env={**os.environ, "DESTDIR": str(dest)}, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "browser app installed: /opt/dermedge/web/dist" in proc.stdout
    dist = dest / "opt" / "dermedge" / "web" / "dist"
    assert json.loads((dist / "config.json").read_text()) == {"model": f"models/{shipped.name}/"}
    card = json.loads((dist / "models" / shipped.name / "card.json").read_text())
    assert (dist / "models" / shipped.name / card["model_file"]["path"]).stat().st_size == card["model_file"]["size_bytes"]
    assert not (REPO / "web" / "dist").exists() or (REPO / "web" / "dist" / "index.html").is_file()  # tree untouched
    app = Flask(__name__)
    register_web_app(app, dist)  # as the daemon serves it from /opt/dermedge/web/dist
    page = app.test_client().get("/app/")
    assert page.status_code == 200 and b"DermEdge" in page.data


def test_no_web_installs_no_app(tmp_path):
    models = tmp_path / "models"
    (models / "m").mkdir(parents=True)
    (models / "m" / "card.json").write_text('{"name": "m"}\n')
    dest = tmp_path / "root"
    proc = subprocess.run(["bash", str(INSTALL), "--models", str(models), "--no-start", "--no-web"], check=False,
                          env={**os.environ, "DESTDIR": str(dest)}, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert not (dest / "opt" / "dermedge" / "web").exists()
