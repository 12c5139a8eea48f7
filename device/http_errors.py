"""The one error shape of every HTTP route: ``{"error": reason}`` with its status code."""
from __future__ import annotations

from flask import Response, jsonify


def json_error(code: int, reason: str) -> Response:
    """``{"error": reason}`` with ``code``: the one error shape of every route."""
    response = jsonify({"error": reason})
    response.status_code = code
    return response
