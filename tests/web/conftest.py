"""Fixtures for the web app tests: a fresh build, a static server on loopback (node dependencies:
``web_deps`` in tests/conftest.py, shared with the device page's browser test)."""
from __future__ import annotations

import functools
import json
import shutil
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.helpers import run_node

REPO = Path(__file__).resolve().parents[2]
WEB = REPO / "web"


@pytest.fixture(scope="session")
def web_dist(tmp_path_factory, web_deps) -> Path:
    """The app built from this checkout as ``make web`` builds it: with its own default model."""
    out = tmp_path_factory.mktemp("web") / "dist"
    run_node("node", "build.mjs", "--out", str(out))
    return out


def built_model(web_dist: Path) -> str:
    """The URL path of the model the build copied in (``models/<name>/``), from its config.json."""
    return json.loads((web_dist / "config.json").read_text())["model"]


@pytest.fixture(scope="session")
def model_dir(web_dist) -> Path:
    """The shipped model folder the app was built with."""
    return REPO / built_model(web_dist)


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format, *args):
        pass


@pytest.fixture(scope="session")
def static_server(web_dist):
    """Any static host will do: the standard library's, on a free loopback port."""
    handler = functools.partial(_QuietHandler, directory=str(web_dist))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def add_model(web_dist: Path, name: str, card: dict, *, with_file: bool = True) -> str:
    """A model folder ``models/<name>/`` in the build with ``card`` and the built model's file;
    returns its URL path."""
    folder = web_dist / "models" / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "card.json").write_text(json.dumps(card))
    if with_file:
        shutil.copy(web_dist / built_model(web_dist) / card["model_file"]["path"], folder / card["model_file"]["path"])
    return f"models/{name}/"
