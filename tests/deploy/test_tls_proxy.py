"""``install.sh --tls``: the certificate made at install, the nginx site, and nginx really in front
of a running daemon.

install.sh runs in its staging mode (DESTDIR: files under a temp folder, system commands only
printed). The staged site is then checked by nginx itself (``nginx -t``) and served by a real
nginx (Debian's, as on the Pi) on a free port, proxying to a real daemon on loopback.
"""
from __future__ import annotations

import os
import re
import shutil
import socket
import ssl
import subprocess
import time
from pathlib import Path

import pytest
import requests
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from tests.deploy.daemon_process import TIMEOUT, daemon_config, find_free_port, wait_for

REPO = Path(__file__).parents[2]
INSTALL = REPO / "device" / "systemd" / "install.sh"
NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
needs_nginx = pytest.mark.skipif(NGINX is None, reason="nginx missing (apt-get install nginx; .ci/run does)")
TOKEN = "proxy-test-token"


def staged_install(dest: Path, models: Path) -> str:
    proc = subprocess.run(["bash", str(INSTALL), "--tls", "--models", str(models)], env={**os.environ, "DESTDIR": str(dest)},
                          check=False, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def fingerprint(cert_pem: bytes) -> str:
    digest = x509.load_pem_x509_certificate(cert_pem).fingerprint(hashes.SHA256())
    return ":".join(f"{b:02X}" for b in digest)


@pytest.fixture(scope="module")
def staged(tmp_path_factory):
    root = tmp_path_factory.mktemp("tls")
    models = root / "models" / "m"
    models.mkdir(parents=True)
    (models / "card.json").write_text("{}\n")
    return root, staged_install(root / "dest", root / "models")


def test_install_makes_a_certificate_and_prints_its_fingerprint(staged):
    root, out = staged
    tls = root / "dest" / "etc" / "dermedge" / "tls"
    cert = (tls / "dermedge.crt").read_bytes()
    printed = re.search(r"TLS certificate sha256 Fingerprint=([0-9A-F:]+)", out)
    assert printed and printed.group(1) == fingerprint(cert)
    assert (tls / "dermedge.key").stat().st_mode & 0o777 == 0o600
    names = x509.load_pem_x509_certificate(cert).extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert "localhost" in names.value.get_values_for_type(x509.DNSName)
    # a reinstall keeps it, so clients that pinned the fingerprint keep working
    again = staged_install(root / "dest", root / "models")
    assert f"Fingerprint={printed.group(1)}" in again and "kept the certificate" in again


def test_the_site_proxies_to_loopback_with_per_client_limits(staged):
    root, out = staged
    site = (root / "dest" / "etc" / "nginx" / "sites-available" / "dermedge.conf").read_text()
    assert not re.search(r"@[A-Z_]+@", site)  # every placeholder filled
    assert re.findall(r"proxy_pass (\S+);", site) == ["http://127.0.0.1:5000"] * 2
    assert "limit_conn dermedge_conn 8;" in site and "limit_req zone=dermedge_req" in site
    assert "listen 443 ssl;" in site
    enabled = root / "dest" / "etc" / "nginx" / "sites-enabled" / "dermedge.conf"
    assert os.readlink(enabled) == "/etc/nginx/sites-available/dermedge.conf"
    assert "would run: nginx -t" in out
    config = yaml.safe_load((root / "dest" / "etc" / "dermedge" / "device.yaml").read_text())
    assert config["http"]["trusted_proxies"] == ["127.0.0.1"]  # the daemon believes nginx's X-Forwarded-For
    assert any(line.startswith("would run: env DEBIAN_FRONTEND=noninteractive apt-get install") and " nginx " in line
               for line in out.splitlines())


def nginx_conf(root: Path, *, tls_port: int, http_port: int) -> Path:
    """A main nginx.conf around the staged site, with its paths moved under ``root``."""
    dest = root / "dest"
    site = (dest / "etc" / "nginx" / "sites-available" / "dermedge.conf").read_text()
    site = site.replace("/etc/dermedge", str(dest / "etc" / "dermedge"))
    site = site.replace("listen 443", f"listen {tls_port}").replace("[::]:443", f"[::]:{tls_port}")
    site = site.replace("127.0.0.1:5000", f"127.0.0.1:{http_port}")
    run = root / f"nginx-{tls_port}"
    run.mkdir()
    run.chmod(0o777)  # the workers may run as nobody
    (run / "site.conf").write_text(site)
    temp = " ".join(f"{kind}_temp_path {run}/{kind};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    conf = run / "nginx.conf"
    conf.write_text(f"error_log stderr;\npid {run}/nginx.pid;\nevents {{}}\n"
                    f"http {{\n  access_log off;\n  {temp}\n  include {run}/site.conf;\n}}\n")
    return conf


@needs_nginx
def test_nginx_accepts_the_staged_configuration(staged):
    root, _ = staged
    conf = nginx_conf(root, tls_port=find_free_port(), http_port=5000)
    proc = subprocess.run([NGINX, "-t", "-e", "stderr", "-p", str(conf.parent), "-c", str(conf)],
                          check=False, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0 and "test is successful" in proc.stderr, proc.stderr


@needs_nginx
def test_https_through_nginx_to_the_daemon_on_loopback(staged, tiny_model_dir, fixture_dir, start_daemon):
    root, _ = staged
    daemon = start_daemon(daemon_config(tiny_model_dir, fixture_dir / "images", device_id=f"tls-{os.getpid()}",
                                        http={"token": TOKEN, "trusted_proxies": ["127.0.0.1"]}))
    daemon.wait_running()
    tls_port = find_free_port()
    conf = nginx_conf(root, tls_port=tls_port, http_port=daemon.port)
    nginx = subprocess.Popen([NGINX, "-e", "stderr", "-p", str(conf.parent), "-c", str(conf), "-g", "daemon off;"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    cert = root / "dest" / "etc" / "dermedge" / "tls" / "dermedge.crt"
    base = f"https://127.0.0.1:{tls_port}"
    try:
        wait_for(lambda: _accepts(tls_port), TIMEOUT, "nginx listening")
        served = ssl.get_server_certificate(("127.0.0.1", tls_port)).encode()
        assert fingerprint(served) == fingerprint(cert.read_bytes())  # what the installer printed
        health = requests.get(f"{base}/health", verify=str(cert), timeout=TIMEOUT)
        assert health.status_code == 200 and set(health.json()) == {"status", "camera", "mqtt", "inference"}
        assert requests.get(f"{base}/latest", verify=str(cert), timeout=TIMEOUT).status_code == 401
        latest = requests.get(f"{base}/latest", verify=str(cert), timeout=TIMEOUT,
                              headers={"Authorization": f"Bearer {TOKEN}"})
        assert latest.status_code == 200 and "not a diagnosis" in latest.json()["disclaimer"]
        time.sleep(1.5)  # the requests above drain from the limiter, so the whole burst (40) is free
        with requests.Session() as session:  # one client flooding: nginx turns it away, not the daemon
            codes = [session.get(f"{base}/health", verify=str(cert), timeout=TIMEOUT).status_code for _ in range(80)]
        assert set(codes) == {200, 429} and codes.count(200) >= 40, codes
        time.sleep(1.5)
        assert requests.get(f"{base}/health", verify=str(cert), timeout=TIMEOUT).status_code == 200
    finally:
        nginx.terminate()
        nginx.wait(10)
    assert daemon.running


def _accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False
