"""The browser app (``web/``, built by ``make web``) served at ``/app/``.

The page runs the model itself, in the browser; the device only hands out the built files.
They are public (code, the card and the model file, no results or frames), so the routes need
no token. ``send_from_directory`` refuses paths that leave the folder. When the app has not
been built, ``/app/`` answers 404 saying how to build it.
"""
from __future__ import annotations

from pathlib import Path

from flask import Blueprint, Flask, jsonify, send_from_directory

WEB_APP_DIR = Path(__file__).resolve().parent.parent / "web" / "dist"
ENDPOINTS = frozenset({"web_app.index", "web_app.file"})


def register_web_app(app: Flask, folder: Path | None = None) -> None:
    """Add ``GET /app/`` and ``GET /app/<path>`` serving ``folder`` (default :data:`WEB_APP_DIR`) to ``app``."""
    folder = Path(folder or WEB_APP_DIR)
    blueprint = Blueprint("web_app", __name__)

    @blueprint.get("/app/")
    def index():
        return file("index.html")

    @blueprint.get("/app/<path:name>")
    def file(name: str):
        if not (folder / "index.html").is_file():
            response = jsonify({"error": f"web app not built: run 'make web' ({folder} has no index.html)"})
            response.status_code = 404
            return response
        return send_from_directory(folder, name, max_age=0)

    app.register_blueprint(blueprint)
