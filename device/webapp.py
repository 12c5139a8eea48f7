"""The browser app (``web/``, built by ``make web``) served at ``/app/``.

The page runs the model itself, in the browser; the device only hands out the built files.
They are public (code, the card and the model file, no results or frames), so the routes need
no token. ``send_from_directory`` refuses paths that leave the folder. When the app has not
been built, ``/app/`` answers 404 saying how to build it (not where: the route is public, and the
install path is logged instead).
"""
from __future__ import annotations

import logging
from pathlib import Path

from flask import Blueprint, Flask, jsonify, send_from_directory

_log = logging.getLogger(__name__)

WEB_APP_DIR = Path(__file__).resolve().parent.parent / "web" / "dist"
ENDPOINTS = frozenset({"web_app.index", "web_app.file"})


def register_web_app(app: Flask, folder: Path | None = None) -> None:
    """Add ``GET /app/`` and ``GET /app/<path>`` serving ``folder`` (default :data:`WEB_APP_DIR`) to ``app``."""
    folder = Path(folder or WEB_APP_DIR)
    if not (folder / "index.html").is_file():  # said once here, where only the owner reads it
        _log.info("web app not built: %s has no index.html (make web); /app/ answers 404", folder)
    blueprint = Blueprint("web_app", __name__)

    @blueprint.get("/app/")
    def index():
        return file("index.html")

    @blueprint.get("/app/<path:name>")
    def file(name: str):
        if not (folder / "index.html").is_file():
            response = jsonify({"error": "web app not built: run 'make web' where DermEdge is installed"})
            response.status_code = 404
            return response
        return send_from_directory(folder, name, max_age=0)

    app.register_blueprint(blueprint)
