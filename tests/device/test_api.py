"""device.api over real HTTP: a waitress server on a free loopback port, a real tiny int8 model.

Every route is hit with ``requests``; bad uploads must get a 4xx JSON reason and leave the
server serving; the bearer token guards every route but /health.
"""

from __future__ import annotations

import base64
import io
import logging
import socket
import threading
import time
import types
import zlib
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np
import pytest
import requests
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from device.api import MAX_STREAMS, create_app
from device.config import HttpConfig, PostprocessConfig
from device.decode import decode_image
from device.server import HttpServer
from device.state import LiveState

TOKEN = "t0ken-for-tests"
UPLOAD_MB = 1.0
TIMEOUT = 30  # per request; generous for a loaded 2-core machine


# --- fixtures -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def engine_predict(tiny_model_dir):
    """The real path an upload takes in the daemon: int8 engine + postprocessing, no smoothing."""
    from device.engine import Engine
    from device.postprocess import Postprocessor

    engine = Engine.from_model_dir(tiny_model_dir, num_threads=1)
    post = Postprocessor(engine.card, PostprocessConfig(), smoothing=1)

    def predict(rgb: np.ndarray):
        t_start = time.monotonic()
        return post.process(engine.infer(rgb), rgb=rgb, frame_id=0, timestamp=time.time(), t_start=t_start)

    predict.card = engine.card
    return predict


@pytest.fixture(scope="module")
def jpeg_bytes(fixture_dir) -> bytes:
    return min((fixture_dir / "images").glob("*.jpg")).read_bytes()


@pytest.fixture
def serve(engine_predict):
    """``serve(token=None, predict=None, stream_fps=50, **http)`` -> a running server (url, state, server)."""
    servers: list[HttpServer] = []

    def start(*, token: str | None = None, predict=None, stream_fps: float = 50.0, **http):
        state = LiveState(engine_predict.card.name)
        cfg = HttpConfig(port=0, token=token, max_upload_mb=UPLOAD_MB, stream_fps=stream_fps, **http)
        server = HttpServer(create_app(cfg, state, predict or engine_predict), cfg.host, cfg.port,
                            trusted_proxies=cfg.trusted_proxies)
        server.start()
        servers.append(server)
        return types.SimpleNamespace(url=f"http://127.0.0.1:{server.port}", state=state, server=server)

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def api(serve):
    return serve()


def publish_frame(state: LiveState, predict, rgb: np.ndarray):
    result = predict(rgb)
    state.publish_frame(result, rgb)
    return result


def assert_json_error(response: requests.Response, code: int) -> str:
    assert response.status_code == code, response.text
    assert response.headers["Content-Type"].startswith("application/json"), response.headers["Content-Type"]
    reason = response.json()["error"]
    assert isinstance(reason, str) and reason
    return reason


# --- images ---------------------------------------------------------------------------


def encode(rgb: np.ndarray, fmt: str, mode: str | None = None, **kw) -> bytes:
    image = Image.fromarray(rgb)
    if mode:
        image = image.convert(mode)
    out = io.BytesIO()
    image.save(out, fmt, **kw)
    return out.getvalue()


def png_16bit(rgb: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR).astype(np.uint16) * 257)
    assert ok
    return buf.tobytes()


def png_bomb(side: int = 10_000) -> bytes:
    """A valid grey PNG of side x side zero pixels: ~100 kB on the wire, 100 MP decoded."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

    packer = zlib.compressobj(9)
    row = bytes(side + 1)  # filter byte + pixels
    idat = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()
    ihdr = side.to_bytes(4, "big") * 2 + bytes([8, 0, 0, 0, 0])
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def jpeg_with_size(jpeg: bytes, width: int, height: int) -> bytes:
    """The same JPEG with its frame header claiming another size."""
    sof = jpeg.find(b"\xff\xc0")
    assert sof > 0
    data = bytearray(jpeg)
    data[sof + 5 : sof + 7] = height.to_bytes(2, "big")
    data[sof + 7 : sof + 9] = width.to_bytes(2, "big")
    return bytes(data)


def with_fill_bytes(jpeg: bytes) -> bytes:
    """Legal 0xFF fill bytes before the frame header, which a naive header reader trips over."""
    sof = jpeg.find(b"\xff\xc0")
    return jpeg[:sof] + b"\xff\xff\xff" + jpeg[sof:]


def bmp_with_size(width: int, height: int) -> bytes:
    data = bytearray(encode(np.zeros((8, 8, 3), np.uint8), "BMP"))
    data[18:26] = width.to_bytes(4, "little") + height.to_bytes(4, "little")
    return bytes(data)


def webp_canvas(width: int, height: int) -> bytes:
    """An extended WebP header declaring a canvas of width x height."""
    vp8x = bytes(4) + (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
    body = b"WEBP" + b"VP8X" + len(vp8x).to_bytes(4, "little") + vp8x
    return b"RIFF" + len(body).to_bytes(4, "little") + body


@pytest.fixture(scope="module")
def lesion(jpeg_bytes) -> np.ndarray:
    return decode_image(jpeg_bytes)


# --- routes ---------------------------------------------------------------------------


def test_health_reports_model_and_components(api):
    api.state.set_component("camera", "ok")
    api.state.set_component("mqtt", "connected")
    response = requests.get(f"{api.url}/health", timeout=TIMEOUT)
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert body["model"] == api.state.model_name
    assert (body["camera"], body["mqtt"]) == ("ok", "connected")
    for key in ("fps", "uptime_s", "frames", "inference"):
        assert key in body
    api.state.set_component("camera", "degraded", "source gone")
    assert requests.get(f"{api.url}/health", timeout=TIMEOUT).json()["status"] == "degraded"


def test_latest_is_404_before_a_frame_then_the_result(api, engine_predict, lesion):
    assert_json_error(requests.get(f"{api.url}/latest", timeout=TIMEOUT), 404)
    result = publish_frame(api.state, engine_predict, lesion)
    response = requests.get(f"{api.url}/latest", timeout=TIMEOUT)
    assert response.status_code == 200
    assert response.json() == result.to_dict()


def test_predict_upload_runs_the_same_path_as_a_direct_call(api, engine_predict, jpeg_bytes, lesion):
    response = requests.post(
        f"{api.url}/predict", files={"image": ("lesion.jpg", jpeg_bytes, "image/jpeg")}, timeout=TIMEOUT
    )
    assert response.status_code == 200, response.text
    body = response.json()
    direct = engine_predict(lesion)
    assert body["class_code"] == direct.class_code
    assert body["class_code"] in engine_predict.card.codes
    assert body["all_probabilities"] == pytest.approx(direct.all_probabilities, abs=1e-5)
    assert sum(body["all_probabilities"].values()) == pytest.approx(1.0, abs=1e-3)
    assert body["state"] in ("ok", "uncertain", "poor_quality")
    assert [t["class_code"] for t in body["top3"]] == [c for c, _ in direct.top3]
    assert "not a diagnosis" in body["disclaimer"].lower()


def test_predict_base64_matches_multipart(api, jpeg_bytes):
    multipart = requests.post(
        f"{api.url}/predict", files={"image": ("x.jpg", jpeg_bytes)}, timeout=TIMEOUT
    ).json()
    encoded = base64.b64encode(jpeg_bytes).decode()
    wrapped = "\n".join(encoded[i : i + 76] for i in range(0, len(encoded), 76))  # MIME line breaks
    for payload in (encoded, "data:image/jpeg;base64," + encoded, wrapped):
        response = requests.post(f"{api.url}/predict_base64", json={"image": payload}, timeout=TIMEOUT)
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["class_code"] == multipart["class_code"]
        assert body["all_probabilities"] == pytest.approx(multipart["all_probabilities"], abs=1e-6)


def test_snapshot_is_the_latest_overlaid_frame(api, engine_predict, lesion):
    assert_json_error(requests.get(f"{api.url}/snapshot.jpg", timeout=TIMEOUT), 404)
    overlaid = lesion.copy()
    overlaid[:20, :20] = (255, 0, 0)  # a marker the overlay renderer might draw
    api.state.publish_frame(engine_predict(lesion), overlaid)
    response = requests.get(f"{api.url}/snapshot.jpg", timeout=TIMEOUT)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "image/jpeg"
    decoded = decode_image(response.content)
    assert decoded.shape == overlaid.shape
    assert decoded[5, 5, 0] > 200 and decoded[5, 5, 2] < 60
    assert np.abs(decoded.astype(int) - overlaid).mean() < 10


def read_parts(response: requests.Response, count: int) -> list[tuple[dict, bytes]]:
    """The first ``count`` parts of a multipart/x-mixed-replace body: (headers, payload)."""
    boundary = response.headers["Content-Type"].split("boundary=")[1].encode()
    chunks = response.iter_content(chunk_size=4096)
    buf, parts = b"", []
    while len(parts) < count:
        buf += next(chunks)
        while True:
            start = buf.find(b"--" + boundary + b"\r\n")
            end_of_headers = buf.find(b"\r\n\r\n", start)
            if start < 0 or end_of_headers < 0:
                break
            lines = buf[start:end_of_headers].decode().split("\r\n")[1:]
            headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines)}
            body_start = end_of_headers + 4
            body_end = body_start + int(headers["content-length"])
            if len(buf) < body_end + 2:
                break
            parts.append((headers, buf[body_start:body_end]))
            buf = buf[body_end + 2 :]
    return parts[:count]


class FramePump:
    """Publishes frames with a changing grey level from a background thread, like the daemon loop."""

    def __init__(self, state: LiveState, predict, rgb: np.ndarray):
        self.result = predict(rgb)
        self.state = state
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        state.publish_frame(self.result, np.zeros((60, 80, 3), np.uint8))

    def _run(self):
        level = 0
        while not self.stop.wait(0.02):
            level = (level + 16) % 256
            self.state.publish_frame(self.result, np.full((60, 80, 3), level, np.uint8))

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(5)


def assert_stream_refused(url: str, code: int) -> None:
    """/stream.mjpg answers ``code`` with a JSON reason. Asked with stream=True and the status checked
    before the body is read: a stream wrongly granted would otherwise be read forever."""
    with requests.get(f"{url}/stream.mjpg", stream=True, timeout=TIMEOUT) as response:
        assert response.status_code == code, response.headers.get("Content-Type")
        assert_json_error(response, code)


def test_stream_sends_jpeg_parts(api, engine_predict, lesion):
    assert_stream_refused(api.url, 404)
    with (
        FramePump(api.state, engine_predict, lesion),
        requests.get(f"{api.url}/stream.mjpg", stream=True, timeout=TIMEOUT) as response,
    ):
        assert response.status_code == 200
        assert response.headers["Content-Type"].startswith("multipart/x-mixed-replace")
        parts = read_parts(response, 3)
    assert len(parts) == 3
    for headers, payload in parts:
        assert headers["content-type"] == "image/jpeg"
        assert decode_image(payload).shape == (60, 80, 3)


def test_stream_limit_and_slot_release(api, engine_predict, lesion):
    with FramePump(api.state, engine_predict, lesion):
        open_streams = []
        try:
            for _ in range(MAX_STREAMS):
                response = requests.get(f"{api.url}/stream.mjpg", stream=True, timeout=TIMEOUT)
                assert response.status_code == 200
                read_parts(response, 1)
                open_streams.append(response)
            assert_stream_refused(api.url, 429)
            assert requests.get(f"{api.url}/health", timeout=TIMEOUT).status_code == 200  # not starved
            open_streams.pop().close()

            def reopened():  # the server frees the slot when its next write finds the client gone
                response = requests.get(f"{api.url}/stream.mjpg", stream=True, timeout=TIMEOUT)
                if response.status_code == 200:
                    open_streams.append(response)
                    return True
                response.close()
                return False

            deadline = time.monotonic() + 20
            while not reopened():
                assert time.monotonic() < deadline, "a closed stream never gave its slot back"
                time.sleep(0.1)
        finally:
            for response in open_streams:
                response.close()


def test_server_stop_ends_open_streams(serve, engine_predict, lesion):
    api = serve()
    with FramePump(api.state, engine_predict, lesion):
        response = requests.get(f"{api.url}/stream.mjpg", stream=True, timeout=TIMEOUT)
        read_parts(response, 1)
        api.server.stop()
        with pytest.raises(
            (requests.exceptions.ChunkedEncodingError, requests.exceptions.ConnectionError, StopIteration)
        ):
            read_parts(response, 10_000)
        with pytest.raises(requests.exceptions.ConnectionError):
            requests.get(f"{api.url}/health", timeout=5)


def test_metrics_are_prometheus_text(api, engine_predict, lesion, jpeg_bytes):
    publish_frame(api.state, engine_predict, lesion)
    requests.post(f"{api.url}/predict", files={"image": ("x.jpg", jpeg_bytes)}, timeout=TIMEOUT)
    requests.post(f"{api.url}/predict", files={"image": ("x.jpg", b"junk")}, timeout=TIMEOUT)
    response = requests.get(f"{api.url}/metrics", timeout=TIMEOUT)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }
    assert samples[("dermedge_frames_total", ())] == 1
    assert samples[("dermedge_http_requests_total", (("code", "200"), ("route", "/predict")))] == 1
    assert samples[("dermedge_http_requests_total", (("code", "400"), ("route", "/predict")))] == 1
    assert samples[("dermedge_latency_seconds_count", (("stage", "total"),))] == 1


def test_unknown_route_and_wrong_method_are_json(api):
    assert_json_error(requests.get(f"{api.url}/nope", timeout=TIMEOUT), 404)
    response = requests.get(f"{api.url}/predict", timeout=TIMEOUT)
    assert_json_error(response, 405)
    assert "POST" in response.headers["Allow"]
    assert_json_error(requests.delete(f"{api.url}/latest", timeout=TIMEOUT), 405)


def test_no_route_serves_files(api):
    for path in ("/static/../../../../etc/passwd", "/static/api.py", "/..%2f..%2fetc%2fpasswd"):
        assert_json_error(requests.get(f"{api.url}{path}", timeout=TIMEOUT), 404)


# --- bad and unusual input ------------------------------------------------------------


def _multipart(name, data, filename="x.jpg", content_type="image/jpeg"):
    return {"files": {name: (filename, data, content_type)}}


BAD_UPLOADS = {
    "empty file": (lambda j: _multipart("image", b""), 400, "empty"),
    "truncated jpeg": (lambda j: _multipart("image", j[: len(j) // 2]), 400, "decodable"),
    "jpeg header only": (lambda j: _multipart("image", j[:40]), 400, "JPEG"),
    "non-image bytes": (lambda j: _multipart("image", b"%PDF-1.4 not an image at all"), 400, "format"),
    "gif": (lambda j: _multipart("image", encode(np.zeros((8, 8, 3), np.uint8), "GIF")), 400, "format"),
    "tiff": (lambda j: _multipart("image", encode(np.zeros((8, 8, 3), np.uint8), "TIFF")), 400, "format"),
    "huge jpeg behind fill bytes": (
        lambda j: _multipart("image", with_fill_bytes(jpeg_with_size(j, 60_000, 60_000))),
        422,
        "too large",
    ),
    "huge bmp dimensions": (lambda j: _multipart("image", bmp_with_size(30_000, 30_000)), 422, "too large"),
    "huge webp canvas": (lambda j: _multipart("image", webp_canvas(16_000, 16_000)), 422, "too large"),
    "huge jpeg dimensions": (
        lambda j: _multipart("image", jpeg_with_size(j, 60_000, 60_000)),
        422,
        "too large",
    ),
    "png decompression bomb": (
        lambda j: _multipart("image", png_bomb(), "bomb.png", "image/png"),
        422,
        "too large",
    ),
    "path as file name": (lambda j: _multipart("image", b"junk", filename="../../etc/passwd"), 400, "format"),
    "wrong field": (lambda j: _multipart("file", j), 400, "'image'"),
    "raw jpeg body": (lambda j: {"data": j, "headers": {"Content-Type": "image/jpeg"}}, 415, "multipart"),
    "urlencoded form": (lambda j: {"data": {"image": "abc"}}, 415, "multipart"),
    "multipart without boundary": (
        lambda j: {"data": j, "headers": {"Content-Type": "multipart/form-data"}},
        400,
        "'image'",
    ),
    "oversize": (lambda j: _multipart("image", j + bytes(int(UPLOAD_MB * 1024 * 1024))), 413, "too large"),
}


@pytest.mark.parametrize("case", list(BAD_UPLOADS))
def test_bad_uploads_get_a_json_reason(api, jpeg_bytes, case):
    make, code, fragment = BAD_UPLOADS[case]
    reason = assert_json_error(requests.post(f"{api.url}/predict", timeout=TIMEOUT, **make(jpeg_bytes)), code)
    assert fragment in reason
    assert requests.get(f"{api.url}/health", timeout=TIMEOUT).status_code == 200


BAD_BASE64 = {
    "not json content type": ({"data": "image=abc", "headers": {"Content-Type": "text/plain"}}, 415),
    "malformed json": ({"data": "{oops", "headers": {"Content-Type": "application/json"}}, 400),
    "json array": ({"json": ["abc"]}, 400),
    "deeply nested json": ({"data": "[" * 100_000, "headers": {"Content-Type": "application/json"}}, 400),
    "invalid utf-8": (
        {"data": b'{"image": "\xff\xfe"}', "headers": {"Content-Type": "application/json"}},
        400,
    ),
    "missing image": ({"json": {"picture": "abc"}}, 400),
    "image not a string": ({"json": {"image": 42}}, 400),
    "bad base64": ({"json": {"image": "@@not base64@@"}}, 400),
    "non-ascii": ({"json": {"image": "ïmage"}}, 400),
    "empty": ({"json": {"image": ""}}, 400),
    "base64 of text": ({"json": {"image": base64.b64encode(b"hello, world").decode()}}, 400),
    "oversize": ({"json": {"image": "A" * int(UPLOAD_MB * 1024 * 1024 * 1.2)}}, 413),
}


@pytest.mark.parametrize("case", list(BAD_BASE64))
def test_bad_base64_requests_get_a_json_reason(api, case):
    kwargs, code = BAD_BASE64[case]
    assert_json_error(requests.post(f"{api.url}/predict_base64", timeout=TIMEOUT, **kwargs), code)


VALID_VARIANTS = {  # name -> encoder of a small RGB image
    "png rgba": lambda rgb: encode(rgb, "PNG", "RGBA"),
    "png 16-bit": png_16bit,
    "png grey": lambda rgb: encode(rgb, "PNG", "L"),
    "jpeg grey": lambda rgb: encode(rgb, "JPEG", "L"),
    "cmyk jpeg": lambda rgb: encode(rgb, "JPEG", "CMYK"),
    "jpeg with fill bytes": lambda rgb: with_fill_bytes(encode(rgb, "JPEG")),
    "1x1 jpeg": lambda rgb: encode(rgb[:1, :1], "JPEG"),
    "webp": lambda rgb: encode(rgb, "WEBP"),
    "bmp": lambda rgb: encode(rgb, "BMP"),
}


@pytest.mark.parametrize("variant", list(VALID_VARIANTS))
def test_unusual_but_valid_images_are_classified(api, lesion, variant):
    data = VALID_VARIANTS[variant](lesion[::4, ::4].copy())
    response = requests.post(f"{api.url}/predict", files={"image": ("x", data)}, timeout=TIMEOUT)
    assert response.status_code == 200, response.text
    assert sum(response.json()["all_probabilities"].values()) == pytest.approx(1.0, abs=1e-3)


def test_a_failing_predict_is_a_logged_json_error_and_the_server_carries_on(serve, jpeg_bytes, caplog):
    def broken(rgb):
        raise RuntimeError("interpreter exploded")

    api = serve(predict=broken)
    with caplog.at_level(logging.ERROR, logger="device.api"):
        response = requests.post(
            f"{api.url}/predict", files={"image": ("x.jpg", jpeg_bytes)}, timeout=TIMEOUT
        )
    assert_json_error(response, 500)
    assert "exploded" not in response.text  # internals stay in the log
    assert "interpreter exploded" in caplog.text
    assert requests.get(f"{api.url}/health", timeout=TIMEOUT).status_code == 200
    assert 'dermedge_errors_total{kind="http"} 1' in requests.get(f"{api.url}/metrics", timeout=TIMEOUT).text


def test_concurrent_uploads_all_succeed_with_one_answer(api, jpeg_bytes):
    def post(_):
        response = requests.post(f"{api.url}/predict", files={"image": ("x.jpg", jpeg_bytes)}, timeout=60)
        return response.status_code, response.json()["all_probabilities"]

    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(post, range(48)))
    assert {code for code, _ in answers} == {200}
    first = answers[0][1]
    for _, probabilities in answers:
        assert probabilities == pytest.approx(first, abs=1e-6)


# --- token ----------------------------------------------------------------------------

GUARDED = [
    ("GET", "/latest"),
    ("POST", "/predict"),
    ("POST", "/predict_base64"),
    ("GET", "/snapshot.jpg"),
    ("GET", "/stream.mjpg"),
    ("GET", "/metrics"),
    ("GET", "/no-such-route"),
]


def _request(api, method, path, jpeg, headers):
    kwargs = {}
    if path == "/predict":
        kwargs["files"] = {"image": ("x.jpg", jpeg)}
    elif path == "/predict_base64":
        kwargs["json"] = {"image": base64.b64encode(jpeg).decode()}
    response = requests.request(
        method, f"{api.url}{path}", headers=headers, stream=True, timeout=TIMEOUT, **kwargs
    )
    response.close()  # the stream would go on forever
    return response


def test_token_guards_every_route_but_health(serve, engine_predict, lesion, jpeg_bytes):
    api = serve(token=TOKEN, wrong_tokens_per_minute=1000)  # this test sends many wrong ones on purpose
    publish_frame(api.state, engine_predict, lesion)
    assert requests.get(f"{api.url}/health", timeout=TIMEOUT).status_code == 200
    for method, path in GUARDED:
        for headers in (
            {},
            {"Authorization": "Bearer wrong"},
            {"Authorization": f"Basic {TOKEN}"},
            {"Authorization": f"Bearer {TOKEN}x"},
            {"X-Token": TOKEN},
        ):
            response = _request(api, method, path, jpeg_bytes, headers)
            assert response.status_code == 401, (method, path, headers)
            assert response.headers["WWW-Authenticate"].startswith("Bearer")
        # a token in the query string is not accepted either (it would end up in logs)
        response = requests.request(method, f"{api.url}{path}?token={TOKEN}", timeout=TIMEOUT)
        assert_json_error(response, 401)
        expected = 404 if path == "/no-such-route" else 200
        response = _request(api, method, path, jpeg_bytes, {"Authorization": f"Bearer {TOKEN}"})
        assert response.status_code == expected, (method, path)


def test_a_client_sending_wrong_tokens_is_turned_away_and_others_are_not(serve):
    api = serve(token=TOKEN, wrong_tokens_per_minute=3, trusted_proxies=("127.0.0.1",))
    right, wrong = {"Authorization": f"Bearer {TOKEN}"}, {"Authorization": "Bearer guess"}
    assert requests.get(f"{api.url}/health", headers=wrong, timeout=TIMEOUT).status_code == 200  # counted, still public
    for _ in range(2):
        assert_json_error(requests.get(f"{api.url}/latest", headers=wrong, timeout=TIMEOUT), 401)
    for headers in (wrong, right):  # over the count even the right token waits: guessing must not pay
        response = requests.get(f"{api.url}/latest", headers=headers, timeout=TIMEOUT)
        assert "wrong tokens" in assert_json_error(response, 429)
        assert 55 <= int(response.headers["Retry-After"]) <= 60
    # another client behind the proxy (nginx on loopback names it in X-Forwarded-For) is not affected
    other = {**right, "X-Forwarded-For": "192.0.2.7"}
    response = requests.get(f"{api.url}/health", headers=other, timeout=TIMEOUT)
    assert response.status_code == 200 and "fps" in response.json(), response.text
    # a request that presents no token has nothing to count: the usual 401, not 429
    assert_json_error(requests.get(f"{api.url}/latest", timeout=TIMEOUT), 401)


def test_forwarded_for_from_an_untrusted_peer_is_ignored_so_rotating_it_never_escapes_the_limit(serve):
    api = serve(token=TOKEN, wrong_tokens_per_minute=10)  # no http.trusted_proxies: the default
    codes = [requests.get(f"{api.url}/latest", timeout=TIMEOUT, headers={
        "Authorization": "Bearer guess", "X-Forwarded-For": f"198.51.100.{n}"}).status_code for n in range(200)]
    assert codes[:10] == [401] * 10 and set(codes[10:]) == {429}, codes  # counted for the real peer
    # nor can it aim the limit at someone else: the named address is not the one that waits
    behind = serve(token=TOKEN, wrong_tokens_per_minute=2, trusted_proxies=("127.0.0.1",))
    direct = serve(token=TOKEN, wrong_tokens_per_minute=2)
    for server, spoofer_waits in ((behind, False), (direct, True)):
        for _ in range(3):
            requests.get(f"{server.url}/latest", headers={"Authorization": "Bearer guess",
                                                           "X-Forwarded-For": "192.0.2.7"}, timeout=TIMEOUT)
        mine = requests.get(f"{server.url}/latest", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=TIMEOUT)
        assert (mine.status_code == 429) == spoofer_waits, mine.text


def test_a_host_the_device_does_not_answer_to_gets_421(serve):
    api = serve()
    port = api.server.port
    for host in ("evil.example", f"evil.example:{port}", "localhost.evil.example", "127.0.0.1.nip.io"):
        response = requests.get(f"{api.url}/health", headers={"Host": host}, timeout=TIMEOUT)
        assert "http.allowed_hosts" in assert_json_error(response, 421), host
    own = socket.gethostname().split(".")[0]
    for host in (f"127.0.0.1:{port}", "localhost", f"LOCALHOST:{port}", f"[::1]:{port}", "192.168.1.20",
                 f"{own}.local", own, f"{own}.local.:{port}"):
        assert requests.get(f"{api.url}/health", headers={"Host": host}, timeout=TIMEOUT).status_code == 200, host
    extra = serve(allowed_hosts=("dermedge.clinic.example",))
    ok = requests.get(f"{extra.url}/health", headers={"Host": "Dermedge.Clinic.Example"}, timeout=TIMEOUT)
    assert ok.status_code == 200
    anything = serve(allowed_hosts=("*",))
    assert requests.get(f"{anything.url}/health", headers={"Host": "evil.example"}, timeout=TIMEOUT).status_code == 200


def test_warning_when_listening_beyond_loopback_without_a_token(engine_predict, caplog):
    state = LiveState("m")
    for host, token, warned in (
        ("0.0.0.0", None, True),
        ("192.168.1.20", None, True),
        ("pi.local", None, True),
        ("0.0.0.0", TOKEN, False),
        ("127.0.0.1", None, False),
        ("localhost", None, False),
        ("::1", None, False),
    ):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="device.api"):
            create_app(HttpConfig(host=host, token=token), state, engine_predict)
        assert ("http.token" in caplog.text) is warned, host
