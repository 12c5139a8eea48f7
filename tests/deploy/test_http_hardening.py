"""HTTP hardening of the running daemon (a real ``python -m device run`` with waitress on a loopback
port): over 200 malformed or odd uploads, the bearer token on every route but /health, no debug
mode, no request path or file name reaching the filesystem, the warning for an open bind.

Every bad request must get a 4xx with a JSON reason; valid but odd images (grey, alpha,
16-bit, tiny) get a 200 Result. Nothing may produce a 5xx, and the daemon keeps serving.
"""

from __future__ import annotations

import base64
import json
import os
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import requests

from tests.deploy.daemon_process import TIMEOUT, DaemonProcess, daemon_config, frames_keep_rising

TOKEN = "s3cret-token-for-tests"
MAX_UPLOAD_MB = 1.0
LIMIT = int(MAX_UPLOAD_MB * 1024 * 1024)
# waitress itself turns away bodies over this many times the app's limit (api.WAITRESS_BODY_FACTOR),
# before the app sees them, with its own plain-text 413.
WAITRESS_FACTOR = 4
ODD_OK = (200,)
BAD = (400,)
BAD_OR_PARTIAL = (200, 400)
TOO_LARGE = (422,)  # decoding would need more than http.decode_memory_mb  # a damaged JPEG may still decode (libjpeg fills the missing part)
PWNED = Path("/tmp/dermedge-hardening-pwned")


@dataclass(frozen=True)
class Case:
    name: str
    method: str
    path: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    allowed: tuple[int, ...] = BAD
    json_reason: bool = True  # False only where waitress answers before the app
    reason_has: str = ""


# --- building the uploads -------------------------------------------------------------------------


def encode(img: np.ndarray, ext: str, params: tuple[int, ...] = ()) -> bytes:
    ok, buf = cv2.imencode(ext, img, list(params))
    assert ok, ext
    return buf.tobytes()


def png_header(width: int, height: int, *, bit_depth: int = 8, color_type: int = 2) -> bytes:
    """A PNG whose IHDR declares ``width`` x ``height`` followed by a tiny IDAT: a decompression bomb."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

    ihdr = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([bit_depth, color_type, 0, 0, 0])
    idat = zlib.compress(b"\0" * 4096, 9)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def jpeg_with_size(jpeg: bytes, width: int, height: int) -> bytes:
    """The JPEG with its start-of-frame rewritten to declare ``width`` x ``height``."""
    data = bytearray(jpeg)
    i = 2
    while i < len(data):
        marker, length = data[i + 1], int.from_bytes(data[i + 2 : i + 4], "big")
        if marker in (0xC0, 0xC1, 0xC2):
            data[i + 5 : i + 7] = height.to_bytes(2, "big")
            data[i + 7 : i + 9] = width.to_bytes(2, "big")
            return bytes(data)
        i += 2 + length
    raise AssertionError("no SOF marker")


def bmp_header(width: int, height: int) -> bytes:
    info = (
        (40).to_bytes(4, "little")
        + width.to_bytes(4, "little", signed=True)
        + height.to_bytes(4, "little", signed=True)
        + (1).to_bytes(2, "little")
        + (24).to_bytes(2, "little")
        + b"\0" * 24
    )
    return (
        b"BM" + (54 + 16).to_bytes(4, "little") + b"\0" * 4 + (54).to_bytes(4, "little") + info + b"\0" * 16
    )


def webp_vp8x(width: int, height: int) -> bytes:
    body = (
        b"VP8X"
        + (10).to_bytes(4, "little")
        + b"\0" * 4
        + (width - 1).to_bytes(3, "little")
        + (height - 1).to_bytes(3, "little")
    )
    return b"RIFF" + (4 + len(body)).to_bytes(4, "little") + b"WEBP" + body


def multipart(data: bytes, filename: str = "upload.jpg", ctype: str = "image/jpeg") -> dict:
    return {"files": {"image": (filename, data, ctype)}}


def as_base64(data: bytes) -> dict:
    return {"json": {"image": base64.b64encode(data).decode()}}


def build_cases(jpeg: bytes) -> list[Case]:
    rng = np.random.default_rng(1234)
    rgb = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    h, w = rgb.shape[:2]
    grey = cv2.cvtColor(rgb, cv2.COLOR_BGR2GRAY)
    png = encode(rgb, ".png")
    cases: list[Case] = []

    def both(name: str, data: bytes, allowed: tuple[int, ...], reason_has: str = "") -> None:
        cases.append(
            Case(f"multipart-{name}", "POST", "/predict", multipart(data), allowed, True, reason_has)
        )
        cases.append(
            Case(f"base64-{name}", "POST", "/predict_base64", as_base64(data), allowed, True, reason_has)
        )

    # Valid but odd images: classified like any other.
    alpha = np.dstack([rgb, rng.integers(0, 256, (h, w), dtype=np.uint8)])
    odd = {
        "grey-jpeg": encode(grey, ".jpg"),
        "grey-png": encode(grey, ".png"),
        "rgba-png": encode(alpha, ".png"),
        "rgb16-png": encode(rgb.astype(np.uint16) * 257, ".png"),
        "grey16-png": encode(grey.astype(np.uint16) * 257, ".png"),
        "bmp": encode(rgb, ".bmp"),
        "webp": encode(rgb, ".webp"),
        "progressive-jpeg": encode(rgb, ".jpg", (cv2.IMWRITE_JPEG_PROGRESSIVE, 1)),
        "quality1-jpeg": encode(rgb, ".jpg", (cv2.IMWRITE_JPEG_QUALITY, 1)),
        "1x1-png": encode(rgb[:1, :1], ".png"),
        "1x1-jpeg": encode(rgb[:1, :1], ".jpg"),
        "1-row": encode(rgb[:1], ".png"),
        "1-column": encode(rgb[:, :1], ".png"),
        "3x3": encode(rgb[:3, :3], ".png"),
        "black": encode(np.zeros_like(rgb), ".jpg"),
        "white": encode(np.full_like(rgb, 255), ".png"),
        "noise": encode(rng.integers(0, 256, rgb.shape, dtype=np.uint8), ".png"),
        "3000x2000": encode(cv2.resize(rgb, (3000, 2000)), ".jpg", (cv2.IMWRITE_JPEG_QUALITY, 30)),
        "wide-4000x10": encode(cv2.resize(rgb, (4000, 10)), ".png"),
    }
    for name, data in odd.items():
        both(name, data, ODD_OK)
    cases.append(
        Case(
            "multipart-no-filename-or-type",
            "POST",
            "/predict",
            {"files": {"image": ("", jpeg, "application/octet-stream")}},
            ODD_OK,
        )
    )
    cases.append(
        Case(
            "multipart-traversal-filename", "POST", "/predict", multipart(jpeg, f"../../../..{PWNED}"), ODD_OK
        )
    )
    cases.append(
        Case(
            "base64-data-url",
            "POST",
            "/predict_base64",
            {"json": {"image": "data:image/jpeg;base64," + base64.b64encode(jpeg).decode()}},
            ODD_OK,
        )
    )
    cases.append(
        Case(
            "base64-with-newlines",
            "POST",
            "/predict_base64",
            {"json": {"image": base64.encodebytes(jpeg).decode()}},
            ODD_OK,
        )
    )

    # Empty and truncated.
    both("empty", b"", BAD, "empty")
    for cut in sorted(
        {2, 4, 10, 20, 50, 100, 200, 400, 600, 1000, *range(1500, len(jpeg) - 1, len(jpeg) // 25)}
    ):
        both(f"truncated-jpeg-{cut}", jpeg[:cut], BAD_OR_PARTIAL)
    for cut in (8, 16, 24, 33, 40, 60, 100, 1000, len(png) // 4, len(png) // 2, len(png) - 20, len(png) - 1):
        cases.append(
            Case(
                f"truncated-png-{cut}",
                "POST",
                "/predict",
                multipart(png[:cut], "a.png", "image/png"),
                BAD_OR_PARTIAL,
            )
        )

    # Damaged bytes inside an otherwise valid JPEG.
    for k in range(20):
        data = bytearray(jpeg)
        for pos in rng.integers(2, len(data), size=8):
            data[pos] = int(rng.integers(0, 256))
        cases.append(Case(f"bitflips-{k}", "POST", "/predict", multipart(bytes(data)), BAD_OR_PARTIAL))

    # Huge dimensions and decompression bombs: refused from the header, before decoding (422).
    bombs = {
        "png-50000x50000": png_header(50000, 50000),
        "png-65535x65535-16bit": png_header(65535, 65535, bit_depth=16),
        "png-100000x1000": png_header(100000, 1000),
        "png-2^31x2^31": png_header(2**31 - 1, 2**31 - 1),
        "png-grey-50000x50000": png_header(50000, 50000, color_type=0),
        "jpeg-50000x50000": jpeg_with_size(jpeg, 50000, 50000),
        "jpeg-65535x65535": jpeg_with_size(jpeg, 65535, 65535),
        "jpeg-65535x1000": jpeg_with_size(jpeg, 65535, 1000),
        "bmp-50000x50000": bmp_header(50000, 50000),
        "bmp-topdown-50000x50000": bmp_header(50000, -50000),
        "webp-16384x16384": webp_vp8x(16384, 16384),
        "png-6000x6000-real": encode(np.full((6000, 6000, 3), 128, np.uint8), ".png"),
    }
    for name, data in bombs.items():
        both(name, data, TOO_LARGE, "too large")
    # A real big JPEG is decoded at 1/8 scale, within the budget.
    both("real-7000x6000-jpeg", encode(np.full((6000, 7000, 3), 128, np.uint8), ".jpg",
                                       (cv2.IMWRITE_JPEG_QUALITY, 10)), ODD_OK)

    # Not images at all.
    junk = {
        "text": b"hello, this is not an image",
        "html": b"<html><body><img src=x onerror=alert(1)></body></html>",
        "json": b'{"image": "nested"}',
        "svg": b'<svg xmlns="http://www.w3.org/2000/svg" width="50000" height="50000"/>',
        "pdf": b"%PDF-1.7\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF",
        "gif": b"GIF89a\x01\x00\x01\x00\x80\x00\x00\xff\xff\xff\x00\x00\x00!\xf9\x04\x00\x00\x00\x00\x00,"
        b"\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;",
        "tiff": b"II*\x00\x08\x00\x00\x00" + b"\x00" * 64,
        "zip": b"PK\x03\x04" + b"\x00" * 60,
        "elf": b"\x7fELF\x02\x01\x01" + b"\x00" * 57,
        "nul-bytes": b"\x00" * 1000,
        "jpeg-soi-only": b"\xff\xd8",
        "jpeg-soi-eoi": b"\xff\xd8\xff\xd9",
        "png-signature-only": b"\x89PNG\r\n\x1a\n",
        "png-no-ihdr": b"\x89PNG\r\n\x1a\n" + b"\x00" * 40,
        "webp-short": b"RIFF\x10\x00\x00\x00WEBP",
        "bmp-short": b"BM\x00\x00",
        "utf8-text": "Лишай? 皮膚 🩺".encode(),
    }
    for k in range(12):
        junk[f"random-{k}"] = rng.integers(0, 256, int(rng.integers(1, 50_000)), dtype=np.uint8).tobytes()
    for name, data in junk.items():
        both(name, data, BAD)

    # Wrong content types and bodies.
    cases += [
        Case(
            "predict-json-body",
            "POST",
            "/predict",
            {"json": {"image": base64.b64encode(jpeg).decode()}},
            (415,),
        ),
        Case(
            "predict-raw-jpeg-body",
            "POST",
            "/predict",
            {"data": jpeg, "headers": {"Content-Type": "image/jpeg"}},
            (415,),
        ),
        Case(
            "predict-text-plain",
            "POST",
            "/predict",
            {"data": b"x", "headers": {"Content-Type": "text/plain"}},
            (415,),
        ),
        Case("predict-form-urlencoded", "POST", "/predict", {"data": {"image": "abc"}}, (415,)),
        Case("predict-no-body", "POST", "/predict", {}, (415,)),
        Case(
            "predict-field-named-file",
            "POST",
            "/predict",
            {"files": {"file": ("a.jpg", jpeg, "image/jpeg")}},
            BAD,
        ),
        Case(
            "predict-image-as-text-field", "POST", "/predict", {"files": {"image": (None, "not a file")}}, BAD
        ),
        Case(
            "predict-multipart-no-boundary",
            "POST",
            "/predict",
            {"data": b"--x\r\n\r\n", "headers": {"Content-Type": "multipart/form-data"}},
            BAD,
        ),
        Case(
            "predict-multipart-garbage",
            "POST",
            "/predict",
            {"data": os.urandom(2000), "headers": {"Content-Type": "multipart/form-data; boundary=zzz"}},
            BAD,
        ),
        Case(
            "predict-multipart-unterminated",
            "POST",
            "/predict",
            {
                "data": b'--zzz\r\nContent-Disposition: form-data; name="image"; filename="a.jpg"\r\n\r\n'
                + jpeg[:500],
                "headers": {"Content-Type": "multipart/form-data; boundary=zzz"},
            },
            BAD,
        ),
        Case("base64-multipart-body", "POST", "/predict_base64", multipart(jpeg), (415,)),
        Case(
            "base64-text-plain",
            "POST",
            "/predict_base64",
            {"data": json.dumps({"image": "eA=="}), "headers": {"Content-Type": "text/plain"}},
            (415,),
        ),
        Case("base64-no-content-type", "POST", "/predict_base64", {"data": b'{"image": "eA=="}'}, (415,)),
    ]
    bad_json = {
        "not-base64": {"image": "!!!! not base64 ****"},
        "bad-padding": {"image": "abc"},
        "bad-data-url": {"image": "data:image/png;base64,@@@@"},
        "base64-of-garbage": {"image": base64.b64encode(b"garbage" * 10).decode()},
        "empty-string": {"image": ""},
        "image-number": {"image": 5},
        "image-null": {"image": None},
        "image-list": {"image": [1, 2, 3]},
        "image-object": {"image": {"data": "x"}},
        "wrong-key": {"img": base64.b64encode(jpeg).decode()},
        "empty-object": {},
    }
    for name, body in bad_json.items():
        cases.append(Case(f"base64-{name}", "POST", "/predict_base64", {"json": body}, BAD))
    for name, text in {
        "json-list": "[1, 2]",
        "json-string": '"abc"',
        "json-number": "42",
        "json-broken": '{"image": ',
        "json-deep": "[" * 100_000 + "]" * 100_000,
        "json-bad-utf8": b'{"image": "\xff\xfe"}',
    }.items():
        body = text if isinstance(text, bytes) else text.encode()
        cases.append(
            Case(
                f"base64-{name}",
                "POST",
                "/predict_base64",
                {"data": body, "headers": {"Content-Type": "application/json"}},
                BAD,
            )
        )

    # Too large: a JSON 413 from the app; far too large, waitress's own 413 before the app.
    cases += [
        Case(
            "oversize-multipart",
            "POST",
            "/predict",
            multipart(os.urandom(LIMIT + 1000)),
            (413,),
            True,
            "too large",
        ),
        Case(
            "oversize-base64",
            "POST",
            "/predict_base64",
            {"json": {"image": "A" * (LIMIT + 1000)}},
            (413,),
            True,
            "too large",
        ),
        Case(
            "oversize-multipart-2x",
            "POST",
            "/predict",
            multipart(os.urandom(2 * LIMIT)),
            (413,),
            True,
            "too large",
        ),
        Case(
            "oversize-far-beyond",
            "POST",
            "/predict",
            multipart(os.urandom(WAITRESS_FACTOR * LIMIT + 1000)),
            (413,),
            False,
        ),
        Case(
            "oversize-chunked",
            "POST",
            "/predict",
            {
                "data": iter([os.urandom(64 * 1024)] * (2 * LIMIT // (64 * 1024))),
                "headers": {"Content-Type": "multipart/form-data; boundary=zzz"},
            },
            (400, 413),
            False,
        ),
    ]

    # Routes and methods that do not exist, and paths that must never reach the filesystem.
    for method, path, code in [
        ("GET", "/predict", 405),
        ("PUT", "/predict_base64", 405),
        ("DELETE", "/latest", 405),
        ("GET", "/static/../../etc/passwd", 404),
        ("GET", "/../../etc/passwd", 404),
        ("GET", "/%2e%2e/%2e%2e/etc/passwd", 404),
        ("GET", "/etc/passwd", 404),
        ("GET", "/snapshot.jpg/../../../etc/passwd", 404),
        ("GET", "/console", 404),
        # Werkzeug's debugger answers this on any path when it is on (/ is the page now)
        ("GET", "/no-such-page?__debugger__=yes&cmd=resource&f=style.css", 404),
    ]:
        cases.append(Case(f"route-{method}-{path}", method, path, {}, (code,) if code == 405 else (404, 401)))
    return cases


JPEG = (Path(__file__).parents[1] / "fixtures" / "ham10000_mini" / "images" / "ISIC_0024475.jpg").read_bytes()
CASES = build_cases(JPEG)


# --- the daemon under test ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def daemon(tmp_path_factory, tiny_model_dir, fixture_dir):
    workdir = tmp_path_factory.mktemp("hardening")
    config = daemon_config(
        tiny_model_dir,
        fixture_dir / "images",
        device_id=f"hardening-{os.getpid()}",
        # the wrong-token tests below send dozens on purpose; the guess count is tested in test_api.py
        http={"token": TOKEN, "max_upload_mb": MAX_UPLOAD_MB, "wrong_tokens_per_minute": 1000},
    )
    config["camera"]["fps"] = 5.0
    # Whatever the environment says, the server must not run in debug mode.
    proc = DaemonProcess(workdir, config, {"FLASK_DEBUG": "1", "FLASK_ENV": "development"}).start()
    try:
        proc.wait_running()
        yield proc
    finally:
        proc.kill()


@pytest.fixture(scope="module")
def codes(tiny_model_dir) -> set[str]:
    return {label["code"] for label in json.loads((tiny_model_dir / "card.json").read_text())["labels"]}


def test_there_are_at_least_200_malformed_or_odd_uploads():
    uploads = [c for c in CASES if c.path.startswith("/predict")]
    assert len(uploads) >= 200 and len({c.name for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_gets_a_4xx_reason_never_a_5xx(daemon, codes, case):
    kwargs = dict(case.kwargs)
    kwargs["headers"] = {**daemon.headers(), **kwargs.get("headers", {})}
    try:
        response = requests.request(case.method, daemon.base + case.path, timeout=TIMEOUT, **kwargs)
    except requests.ConnectionError:
        # A server may close the connection on a body it refused before reading it all.
        assert case.allowed == (413,) and not case.json_reason, case.name
        return
    assert response.status_code < 500, f"{case.name}: {response.status_code} {response.text[:300]}"
    assert response.status_code in case.allowed, f"{case.name}: {response.status_code} {response.text[:300]}"
    assert "root:" not in response.text
    if response.status_code == 200:
        result = response.json()
        assert result["class_code"] in codes and "not a diagnosis" in result["disclaimer"]
    elif case.json_reason:
        reason = response.json()["error"]
        assert isinstance(reason, str) and reason, case.name
        assert case.reason_has in reason, f"{case.name}: {reason}"
    assert not PWNED.exists()


def test_the_daemon_kept_serving_without_a_single_5xx(daemon):
    assert daemon.running, daemon.log()[-3000:]
    health = daemon.health()
    assert health["status"] == "ok" and health["camera"] == "ok" and health["inference"] == "ok"
    frames_keep_rising(daemon, seconds=1.0)
    metrics = daemon.get("/metrics").text
    served = [line for line in metrics.splitlines() if line.startswith("dermedge_http_requests_total{")]
    assert any('code="400"' in line for line in served) and any('code="200"' in line for line in served)
    assert not any('code="5' in line for line in served), served
    assert 'kind="http"' not in metrics  # the app's catch-all for unexpected errors never ran
    assert "Traceback" not in daemon.log()


# --- token, debug mode, bind warning ---------------------------------------------------------------


PROTECTED = [
    ("GET", "/latest"),
    ("GET", "/snapshot.jpg"),
    ("GET", "/stream.mjpg"),
    ("GET", "/metrics"),
    ("POST", "/predict"),
    ("POST", "/predict_base64"),
]
WRONG_AUTH = {
    "none": {},
    "wrong-token": {"Authorization": "Bearer wrong"},
    "empty-bearer": {"Authorization": "Bearer "},
    "token-prefix": {"Authorization": f"Bearer {TOKEN[:-1]}"},
    "token-plus-suffix": {"Authorization": f"Bearer {TOKEN}x"},
    "no-scheme": {"Authorization": TOKEN},
    "basic-scheme": {"Authorization": "Basic " + base64.b64encode(f"user:{TOKEN}".encode()).decode()},
    "token-header": {"X-Token": TOKEN},
}


@pytest.mark.parametrize(("method", "path"), PROTECTED)
@pytest.mark.parametrize("auth", list(WRONG_AUTH), ids=list(WRONG_AUTH))
def test_every_route_but_health_needs_the_token(daemon, method, path, auth):
    response = requests.request(
        method,
        f"{daemon.base}{path}?token={TOKEN}",
        headers=WRONG_AUTH[auth],
        files={"image": ("a.jpg", JPEG, "image/jpeg")} if path == "/predict" else None,
        timeout=TIMEOUT,
    )
    assert response.status_code == 401, response.text[:200]
    assert response.json()["error"] and response.headers["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize(("method", "path"), PROTECTED)
def test_the_right_token_opens_every_route(daemon, method, path):
    kwargs = (
        {"files": {"image": ("a.jpg", JPEG, "image/jpeg")}}
        if path == "/predict"
        else ({"json": {"image": base64.b64encode(JPEG).decode()}} if path == "/predict_base64" else {})
    )
    with requests.request(
        method, daemon.base + path, headers=daemon.headers(), timeout=TIMEOUT, stream=True, **kwargs
    ) as response:
        assert response.status_code == 200


def test_health_needs_no_token_and_debug_mode_is_never_on(daemon):
    response = requests.get(daemon.base + "/health", timeout=TIMEOUT)
    assert response.status_code == 200 and response.json()["status"] == "ok"
    assert response.headers.get("Server") == "dermedge"  # waitress, not Werkzeug's development server
    missing = requests.get(daemon.base + "/no-such-route", headers=daemon.headers(), timeout=TIMEOUT)
    assert missing.status_code == 404 and missing.headers["Content-Type"] == "application/json"
    assert "Traceback" not in missing.text and "Werkzeug" not in missing.text


@pytest.mark.parametrize(
    ("host", "token", "warned"),
    [("0.0.0.0", None, True), ("0.0.0.0", TOKEN, False), ("127.0.0.1", None, False)],
)
def test_open_bind_without_token_logs_a_warning(
    tiny_model_dir, fixture_dir, start_daemon, host, token, warned
):
    config = daemon_config(
        tiny_model_dir,
        fixture_dir / "images",
        device_id=f"bind-{os.getpid()}",
        http={"host": host, "token": token},
    )
    daemon = start_daemon(config)
    daemon.wait_running()
    log = daemon.log()
    assert ("WARNING device.api" in log and "without http.token" in log) is warned, log[-2000:]


# --- which 413, and what /health tells strangers ---------------------------------------------------


def test_a_body_with_thousands_of_small_fields_gets_a_413_naming_the_parts_limit(daemon):
    fields = [(f"f{i}", (None, "x")) for i in range(5000)]
    response = daemon.post("/predict", files=[*fields, ("image", ("a.jpg", JPEG, "image/jpeg"))])
    assert response.status_code == 413
    reason = response.json()["error"]
    assert "too many form parts" in reason and "body too large" not in reason, reason
    big = daemon.post("/predict", files={"image": ("a.jpg", os.urandom(LIMIT + 1000), "image/jpeg")})
    assert big.status_code == 413 and "request body too large (limit 1 MB" in big.json()["error"]


def test_health_without_the_token_shows_only_status_and_component_states(daemon):
    stranger = requests.get(daemon.base + "/health", timeout=TIMEOUT).json()
    assert set(stranger) == {"status", "camera", "mqtt", "inference"}, stranger
    assert all(isinstance(v, str) for v in stranger.values())
    text = json.dumps(stranger)
    assert str(daemon.config["camera"]["path"]) not in text and "tiny" not in text
    wrong = requests.get(daemon.base + "/health", headers={"Authorization": "Bearer nope"}, timeout=TIMEOUT)
    assert set(wrong.json()) == set(stranger)
    owner = daemon.get("/health").json()
    assert owner["model"] == "tiny" and owner["frames"] > 0 and "details" in owner
    assert {k: owner[k] for k in stranger} == stranger
