"""device.publish.MqttPublisher against a real mosquitto broker and a real paho subscriber."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import types
import uuid
from datetime import datetime
from pathlib import Path

import jinja2
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

import device.publish as publish_module
from device.config import ConfigError, MqttConfig
from device.publish import OFFLINE, ONLINE, MqttPublisher
from device.state import LiveState
from tests.helpers import wait_for

REPO = Path(__file__).parents[2]
WAIT_S = 15.0  # generous: the reconnect backoff tops out at publish.RECONNECT_MAX_S


def assert_retained(mqtt_subscriber, broker, topic: str, payload: str | None = None) -> mqtt.MQTTMessage:
    """A client that subscribes only now gets the message from the broker's retained store."""
    message = mqtt_subscriber(broker, [topic]).wait_for(topic, payload)
    assert message.retain, f"{topic} is not retained"
    return message


@pytest.fixture
def publishers():
    """``publishers(broker, **mqtt_overrides)`` -> a started publisher with a unique device id."""
    made: list[MqttPublisher] = []

    def make(broker, *, state: LiveState | None = None, start: bool = True, **overrides) -> MqttPublisher:
        cfg = MqttConfig(host=broker.host, port=broker.port, prefix="dtest", **overrides)
        pub = MqttPublisher(cfg, f"dev-{uuid.uuid4().hex[:8]}", model_name="test-model", state=state)
        made.append(pub)
        if start:
            pub.start()
        return pub

    yield make
    for pub in made:
        pub.stop()


def test_result_json_and_retained_online(mqtt_broker, mqtt_subscriber, publishers, make_result):
    state = LiveState("test-model")
    pub = publishers(mqtt_broker, state=state)
    wait_for(lambda: pub.connected, what="publisher to connect")
    assert state.health()["mqtt"] == "connected"

    late = mqtt_subscriber(mqtt_broker, [pub.status_topic, pub.result_topic])
    late.wait_for(pub.status_topic, ONLINE)
    # a client that subscribes afterwards still learns the device is online
    assert_retained(mqtt_subscriber, mqtt_broker, pub.status_topic, ONLINE)

    result = make_result("mel", frame_id=42, confidence=0.73)
    assert pub.publish_result(result)
    message = late.wait_for(pub.result_topic)
    assert not message.retain
    body = json.loads(message.payload)
    assert body == json.loads(json.dumps(result.to_dict()))
    for key in (
        "class_code",
        "class_name",
        "class_index",
        "confidence",
        "all_probabilities",
        "top3",
        "state",
        "model",
        "frame_id",
        "timestamp",
        "latency_ms",
        "fps",
        "disclaimer",
    ):
        assert key in body
    assert body["class_code"] == "mel" and body["frame_id"] == 42
    assert sum(body["all_probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
    assert datetime.fromisoformat(body["timestamp"]).tzinfo is not None
    assert set(body["latency_ms"]) == {"preprocess", "inference", "total"}


def test_clean_stop_publishes_retained_offline(mqtt_broker, mqtt_subscriber, publishers):
    state = LiveState("test-model")
    pub = publishers(mqtt_broker, state=state)
    wait_for(lambda: pub.connected, what="publisher to connect")
    sub = mqtt_subscriber(mqtt_broker, [pub.status_topic])
    sub.wait_for(pub.status_topic, ONLINE)
    pub.stop()
    sub.wait_for(pub.status_topic, OFFLINE)
    assert not pub.connected
    assert state.health()["mqtt"] == "stopped"
    assert_retained(mqtt_subscriber, mqtt_broker, pub.status_topic, OFFLINE)
    pub.stop()  # a second stop is a no-op


_KILLABLE = """
import sys, time
from device.config import MqttConfig
from device.publish import MqttPublisher
host, port, device_id = sys.argv[1], int(sys.argv[2]), sys.argv[3]
pub = MqttPublisher(MqttConfig(host=host, port=port, prefix="dtest", keepalive=60), device_id, model_name="m")
pub.start()
time.sleep(120)
"""


def test_last_will_offline_when_the_process_dies(mqtt_broker, mqtt_subscriber):
    device_id = f"dev-{uuid.uuid4().hex[:8]}"
    status_topic = f"dtest/{device_id}/status"
    sub = mqtt_subscriber(mqtt_broker, [status_topic])
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-c", _KILLABLE, mqtt_broker.host, str(mqtt_broker.port), device_id],
        cwd=REPO,
        env=env,
    )
    try:
        sub.wait_for(status_topic, ONLINE)
        proc.send_signal(signal.SIGKILL)  # no DISCONNECT is sent: only the broker's last will can say it
        proc.wait(10)
        sub.wait_for(status_topic, OFFLINE)
    finally:
        proc.kill()
        proc.wait(10)
    assert_retained(mqtt_subscriber, mqtt_broker, status_topic, OFFLINE)


class FakeTime:
    def __init__(self) -> None:
        self.now = 100.0

    def monotonic(self) -> float:
        return self.now


def test_results_go_out_on_change_at_most_max_rate_with_a_heartbeat(
    mqtt_broker, mqtt_subscriber, publishers, make_result, monkeypatch
):
    clock = FakeTime()
    monkeypatch.setattr(publish_module, "time", types.SimpleNamespace(monotonic=clock.monotonic))
    pub = publishers(mqtt_broker, max_rate_hz=2.0, heartbeat_s=3.0)
    wait_for(lambda: pub.connected, what="publisher to connect")
    sub = mqtt_subscriber(mqtt_broker, [pub.result_topic])

    # (time, class, state or None for a flush without a new frame) -> whether a message goes out then
    steps = [
        (0.0, "nv", "ok", True),  # the first result after connecting
        (0.1, "nv", "ok", False),  # unchanged
        (0.3, "mel", "ok", False),  # a change 0.3 s after the last message: held back...
        (0.4, None, None, False),
        (0.5, None, None, True),  # ...and sent once 1 / max_rate_hz has passed, with no new frame
        (0.6, "mel", "ok", False),
        (0.7, "bcc", "ok", False),  # held back...
        (0.8, "mel", "ok", False),  # ...then reverted: nothing left to send
        (1.1, None, None, False),
        (1.2, "mel", "uncertain", True),  # a state change after the interval: at once
        (2.0, "mel", "uncertain", False),
        (4.1, "mel", "uncertain", False),
        (4.2, "mel", "uncertain", True),  # unchanged, but heartbeat_s since the last message
        (4.3, "mel", "uncertain", False),
    ]
    sent, expected_codes = [], []
    last = None
    for frame_id, (t, code, state, expected) in enumerate(steps):
        clock.now = 100.0 + t
        if code is None:
            assert pub.flush() is expected, steps[frame_id]
            if expected:
                sent.append(last[0])
                expected_codes.append(last[1])
            continue
        last = (frame_id, code)
        assert pub.publish_result(make_result(code, state=state, frame_id=frame_id)) is expected, steps[frame_id]
        if expected:
            sent.append(frame_id)
            expected_codes.append(code)

    def received():
        return [(body["frame_id"], body["class_code"]) for body in map(json.loads, (
            m.payload for m in sub.on(pub.result_topic)))]

    wait_for(lambda: len(received()) >= len(sent), what="every result sent")
    assert received() == list(zip(sent, expected_codes))
    assert [code for _, code in received()] == ["nv", "mel", "mel", "mel"]


def test_a_result_stream_is_capped_at_max_rate_and_ends_on_the_last_change(
    mqtt_broker, mqtt_subscriber, publishers, make_result
):
    """Real clock: 30 frames a second whose class flips every frame, as a replay of mixed lesions."""
    pub = publishers(mqtt_broker, max_rate_hz=4.0, heartbeat_s=60.0)
    wait_for(lambda: pub.connected, what="publisher to connect")
    sub = mqtt_subscriber(mqtt_broker, [pub.result_topic])
    codes = ["nv", "mel", "bcc"]
    t0 = time.monotonic()
    frame_id = 0
    while time.monotonic() - t0 < 1.5:
        frame_id += 1
        pub.publish_result(make_result(codes[frame_id % 3], frame_id=frame_id))
        time.sleep(1 / 30)
    elapsed = time.monotonic() - t0
    time.sleep(0.3)
    pub.flush()  # the last change, held back by the rate limit, goes out now
    wait_for(lambda: sub.on(pub.result_topic) and json.loads(sub.on(pub.result_topic)[-1].payload)["frame_id"]
             == frame_id, what="the last frame's result")
    messages = sub.on(pub.result_topic)
    assert len(messages) <= 4.0 * (elapsed + 0.3) + 1  # not 45 messages, one per frame
    assert len(messages) >= 4
    assert json.loads(messages[-1].payload)["class_code"] == codes[frame_id % 3]


def test_qos_1_delivery(mqtt_broker, mqtt_subscriber, publishers, make_result):
    pub = publishers(mqtt_broker, qos=1)
    wait_for(lambda: pub.connected, what="publisher to connect")
    sub = mqtt_subscriber(mqtt_broker, [pub.result_topic, pub.status_topic], qos=1)
    assert sub.wait_for(pub.status_topic, ONLINE).qos == 1
    assert pub.publish_result(make_result())
    assert sub.wait_for(pub.result_topic).qos == 1


def test_home_assistant_discovery(mqtt_broker, mqtt_subscriber, publishers, make_result):
    pub = publishers(mqtt_broker, home_assistant=True, discovery_prefix="hatest")
    wait_for(lambda: pub.connected, what="publisher to connect")
    sub = mqtt_subscriber(mqtt_broker, ["hatest/#"])
    device_id = pub.status_topic.split("/")[1]
    sub.wait_for(f"hatest/sensor/{device_id}/class/config")
    sub.wait_for(f"hatest/sensor/{device_id}/confidence/config")
    class_msg = assert_retained(mqtt_subscriber, mqtt_broker, f"hatest/sensor/{device_id}/class/config")
    conf_msg = assert_retained(mqtt_subscriber, mqtt_broker, f"hatest/sensor/{device_id}/confidence/config")
    class_cfg, conf_cfg = json.loads(class_msg.payload), json.loads(conf_msg.payload)
    for cfg in (class_cfg, conf_cfg):
        assert cfg["state_topic"] == pub.result_topic
        assert cfg["availability_topic"] == pub.status_topic
        assert (cfg["payload_available"], cfg["payload_not_available"]) == (ONLINE, OFFLINE)
        assert cfg["device"]["identifiers"] == [device_id]
        assert cfg["device"]["model"] == "test-model"
    assert class_cfg["unique_id"] != conf_cfg["unique_id"]
    assert conf_cfg["unit_of_measurement"] == "%"

    # Home Assistant renders these Jinja templates against the result JSON
    value_json = make_result("bcc", confidence=0.625).to_dict()
    env = jinja2.Environment()
    assert (
        env.from_string(class_cfg["value_template"]).render(value_json=value_json) == "Basal cell carcinoma"
    )
    assert float(env.from_string(conf_cfg["value_template"]).render(value_json=value_json)) == 62.5
    attributes = json.loads(
        env.from_string(class_cfg["json_attributes_template"]).render(value_json=value_json)
    )
    assert attributes["state"] == "ok" and "not a diagnosis" in attributes["disclaimer"]
    advice_msg = assert_retained(mqtt_subscriber, mqtt_broker, f"hatest/sensor/{device_id}/advice/config")
    advice_cfg = json.loads(advice_msg.payload)
    assert env.from_string(advice_cfg["value_template"]).render(value_json=value_json) == "none"

    # the not-a-lesion state: no class and no confidence (Home Assistant's "unknown"), its advice
    gate = dataclasses.replace(make_result("bcc"), class_code=None, class_name=None, class_index=None,
                               confidence=None, all_probabilities={}, top3=(), state="not_lesion",
                               gate_advice="Point the camera at a skin lesion.").to_dict()
    assert env.from_string(class_cfg["value_template"]).render(value_json=gate) == "Not a skin lesion"
    assert env.from_string(conf_cfg["value_template"]).render(value_json=gate) == "None"
    assert env.from_string(advice_cfg["value_template"]).render(value_json=gate) == "Point the camera at a skin lesion."
    poor = dataclasses.replace(make_result("bcc"), state="poor_quality", quality={"reason": "too dark"}).to_dict()
    assert env.from_string(conf_cfg["value_template"]).render(value_json=poor) == "None"
    assert env.from_string(class_cfg["value_template"]).render(value_json=poor) == "Poor image quality (too dark)"
    assert env.from_string(advice_cfg["value_template"]).render(value_json=poor).startswith("Retake the photo")


def test_broker_down_never_blocks_and_connects_when_it_starts(
    make_broker, free_port, mqtt_subscriber, publishers, make_result
):
    broker = make_broker(port=free_port())  # not started yet
    state = LiveState("test-model")
    pub = publishers(broker, state=state)
    wait_for(lambda: state.health()["mqtt"] == "disconnected", what="the failed first connection")

    calls = threading.Thread(target=lambda: [pub.publish_result(make_result(frame_id=i)) for i in range(200)])
    calls.start()
    calls.join(10)
    assert not calls.is_alive(), "publish_result blocked while the broker was down"
    assert pub.publish_result(make_result()) is False
    assert not pub.connected

    broker.start()
    wait_for(lambda: pub.connected, what="the publisher to connect once the broker is up")
    sub = mqtt_subscriber(broker, [pub.status_topic, pub.result_topic])
    sub.wait_for(pub.status_topic, ONLINE)
    assert pub.publish_result(make_result(frame_id=99))
    assert json.loads(sub.wait_for(pub.result_topic).payload)["frame_id"] == 99


def test_broker_killed_and_restarted_republishes_online(
    private_broker, mqtt_subscriber, publishers, make_result
):
    broker = private_broker.start()
    state = LiveState("test-model")
    pub = publishers(broker, state=state)
    wait_for(lambda: pub.connected, what="publisher to connect")

    broker.kill()
    wait_for(lambda: not pub.connected, what="the publisher to notice the broker died")
    assert state.health()["mqtt"] == "disconnected"
    assert state.health()["status"] == "degraded"
    assert pub.publish_result(make_result()) is False

    broker.start()  # the broker keeps nothing (persistence false): "online" must be published again
    wait_for(lambda: pub.connected, what="the publisher to reconnect")
    sub = mqtt_subscriber(broker, [pub.status_topic, pub.result_topic])
    sub.wait_for(pub.status_topic, ONLINE)
    assert_retained(mqtt_subscriber, broker, pub.status_topic, ONLINE)
    assert pub.publish_result(make_result(frame_id=5))
    assert json.loads(sub.wait_for(pub.result_topic).payload)["frame_id"] == 5
    assert state.health()["mqtt"] == "connected"


def test_username_and_password(make_broker, mqtt_subscriber, publishers, make_result):
    broker = make_broker(anonymous=False)
    passwd = broker.workdir / "passwd"
    subprocess.run(
        ["mosquitto_passwd", "-b", "-c", str(passwd), "edge", "s3cret"], check=True, capture_output=True
    )
    passwd.chmod(0o644)  # mosquitto may drop root privileges before reading it
    broker.conf.write_text(broker.conf.read_text() + f"password_file {passwd}\n")
    broker.start()

    refused_state = LiveState("m")
    refused = publishers(broker, state=refused_state, username="edge", password="wrong")
    wait_for(
        lambda: refused_state.health()["details"].get("mqtt", "").startswith("refused"),
        what="the broker to refuse a wrong password",
    )
    assert not refused.connected

    pub = publishers(broker, username="edge", password="s3cret")
    wait_for(lambda: pub.connected, what="publisher to connect with the right password")
    watcher = mqtt.Client(CallbackAPIVersion.VERSION2)
    watcher.username_pw_set("edge", "s3cret")
    got = threading.Event()
    watcher.on_connect = lambda c, u, f, rc, p: c.subscribe(pub.status_topic)
    watcher.on_message = lambda c, u, m: m.payload == ONLINE.encode() and got.set()
    watcher.connect(broker.host, broker.port)
    watcher.loop_start()
    try:
        assert got.wait(WAIT_S)
    finally:
        watcher.disconnect()
        watcher.loop_stop()


def test_tls_to_a_broker_with_a_self_signed_certificate(make_broker, publishers, make_result, tmp_path):
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    for path in (cert, key):
        path.chmod(0o644)
    broker = make_broker(extra_config=f"certfile {cert}\nkeyfile {key}").start()

    state = LiveState("m")
    pub = publishers(broker, state=state, tls=True, ca_certs=str(cert))
    wait_for(lambda: pub.connected, what="a TLS connection")
    assert pub.publish_result(make_result())

    # without the CA the certificate is not trusted: no connection, no exception into the caller
    untrusted_state = LiveState("m")
    untrusted = publishers(broker, state=untrusted_state, tls=True)
    wait_for(lambda: untrusted_state.health()["mqtt"] == "disconnected", what="the failed handshake")
    assert not untrusted.connected
    assert untrusted.publish_result(make_result()) is False


def test_bad_tls_files_are_a_config_error(publishers, mqtt_broker):
    with pytest.raises(ConfigError, match="mqtt.tls"):
        publishers(mqtt_broker, tls=True, ca_certs="/nonexistent/ca.pem")


def test_disabled_publisher_does_nothing(mqtt_broker, publishers, make_result):
    state = LiveState("m")
    pub = publishers(mqtt_broker, state=state, enabled=False)
    assert state.health()["mqtt"] == "disabled"
    assert pub.publish_result(make_result()) is False
    assert not pub.connected


def test_an_unreachable_broker_is_one_warning_naming_the_address_and_the_reason(
    make_broker, free_port, publishers, caplog
):
    broker = make_broker(port=free_port())  # nothing listens there yet
    state = LiveState("test-model")
    with caplog.at_level("DEBUG", logger="device.publish"):
        pub = publishers(broker, state=state)
        wait_for(lambda: pub._client is not None and state.health()["mqtt"] == "disconnected", what="a failure")
        wait_for(lambda: sum("still cannot reach" in r.getMessage() for r in caplog.records) >= 1, WAIT_S,
                 "a retry")  # paho retries after its reconnect delay
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1  # retries are DEBUG, so the journal is not flooded
    assert f"cannot reach the broker at {broker.host}:{broker.port} (Connection refused)" in warnings[0]
    assert state.health()["details"]["mqtt"] == f"cannot reach {broker.host}:{broker.port}: Connection refused"

    broker.start()
    wait_for(lambda: pub.connected, WAIT_S, "the connection once the broker is up")
    assert state.health()["mqtt"] == "connected"


def test_capture_events_go_to_their_own_topic(mqtt_broker, mqtt_subscriber, publishers):
    pub = publishers(mqtt_broker)
    wait_for(lambda: pub.connected, what="connect")
    sub = mqtt_subscriber(mqtt_broker, [pub.capture_topic])
    assert pub.capture_topic.endswith("/capture")
    assert pub.publish_capture({"id": "20260101T000000000Z-1", "image": "/captures/20260101T000000000Z-1.jpg"})
    message = sub.wait_for(pub.capture_topic)
    assert json.loads(message.payload)["id"] == "20260101T000000000Z-1" and not message.retain


def test_a_not_lesion_result_goes_out_without_a_class(mqtt_broker, mqtt_subscriber, publishers, make_result):
    pub = publishers(mqtt_broker)
    wait_for(lambda: pub.connected, what="publisher to connect")
    sub = mqtt_subscriber(mqtt_broker, [pub.result_topic])
    gate = dataclasses.replace(make_result("mel"), class_code=None, class_name=None, class_index=None,
                               confidence=None, all_probabilities={}, top3=(), state="not_lesion",
                               gate_advice="Point the camera at a skin lesion.")
    assert pub.publish_result(gate)
    sent = json.loads(sub.wait_for(pub.result_topic).payload)
    assert (sent["state"], sent["class_code"], sent["confidence"], sent["refer"]) == ("not_lesion", None, None, None)
    assert (sent["headline"], sent["advice"]) == ("Not a skin lesion", "Point the camera at a skin lesion.")
