"""Device test fixtures: a real mosquitto broker on a free loopback port, and free ports.

``mqtt_broker`` is one broker for the whole session: tests may use it but must leave it
running. A test that stops, kills or restarts a broker takes ``private_broker`` (its own,
per test) instead, or ``make_broker(...)`` for one with its own settings. ``free_port`` gives
the helper that finds a free loopback port; ``mqtt_subscriber`` makes real subscribers that
record messages; ``make_result`` builds consistent Results.
"""

from __future__ import annotations

import subprocess
import threading
import uuid
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from device.config import default_model_dir as daemon_default_model_dir
from device.demo import broker_config, find_free_port, mosquitto_binary, wait_for_port

_START_TIMEOUT_S = 10.0


class Broker:
    """A mosquitto process on 127.0.0.1 with a throwaway config; stop/kill/start for fault tests."""

    host = "127.0.0.1"

    def __init__(
        self, workdir: Path, port: int | None = None, *, anonymous: bool = True, extra_config: str = ""
    ):
        """``extra_config``: more mosquitto.conf lines (listener options such as certfile, or password_file)."""
        binary = mosquitto_binary()
        if binary is None:
            pytest.skip("mosquitto is not installed (apt-get install mosquitto; .ci/run does it)")
        self.binary = binary
        self.port = port or find_free_port()
        self.workdir = workdir
        self.conf = workdir / "mosquitto.conf"
        self.log = workdir / "mosquitto.log"
        self.conf.write_text(broker_config(self.port, self.host, anonymous=anonymous, extra=extra_config))
        self.proc: subprocess.Popen | None = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> Broker:
        if self.running:
            return self
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([self.binary, "-c", str(self.conf)], stdout=log, stderr=log)
        try:
            wait_for_port(self.host, self.port, _START_TIMEOUT_S, alive=lambda: self.running)
        except (RuntimeError, TimeoutError) as err:
            self.stop()
            raise RuntimeError(f"mosquitto did not start: {err}\n{self.log.read_text()[-2000:]}") from err
        return self

    def stop(self) -> None:
        """Graceful stop (SIGTERM)."""
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.terminate()
            self.proc.wait(timeout=10)
            self.proc = None

    def kill(self) -> None:
        """Abrupt death (SIGKILL): clients see their connection drop."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=10)
            self.proc = None

    def restart(self) -> Broker:
        self.stop()
        return self.start()


@pytest.fixture
def free_port():
    """``free_port()`` -> a TCP port on 127.0.0.1 that nothing listens on right now."""
    return find_free_port


@pytest.fixture(scope="session")
def mqtt_broker(tmp_path_factory):
    """The session's shared broker (leave it running)."""
    broker = Broker(tmp_path_factory.mktemp("mosquitto")).start()
    yield broker
    broker.stop()


@pytest.fixture
def make_broker(tmp_path):
    """``make_broker(port=None, anonymous=True, extra_config="")`` -> a Broker of this test's own, not
    started; every one made is stopped at the end of the test."""
    brokers: list[Broker] = []

    def make(port: int | None = None, **kwargs) -> Broker:
        workdir = tmp_path / f"broker{len(brokers)}"
        workdir.mkdir()
        brokers.append(Broker(workdir, port, **kwargs))
        return brokers[-1]

    yield make
    for broker in brokers:
        broker.stop()


@pytest.fixture
def private_broker(make_broker):
    """A broker of this test's own, not started: call ``.start()``, then stop/kill/restart freely."""
    return make_broker()


_LABELS = (
    ("akiec", "Actinic keratosis"),
    ("bcc", "Basal cell carcinoma"),
    ("bkl", "Benign keratosis"),
    ("df", "Dermatofibroma"),
    ("mel", "Melanoma"),
    ("nv", "Melanocytic nevus"),
    ("vasc", "Vascular lesion"),
)


@pytest.fixture
def make_result():
    """``make_result(class_code="nv", state="ok", frame_id=1, confidence=0.8)`` -> a consistent Result."""
    from device.types import Result

    codes = [code for code, _ in _LABELS]

    def build(
        class_code: str = "nv",
        *,
        state: str = "ok",
        frame_id: int = 1,
        confidence: float = 0.8,
        latency_ms: float = 20.0,
    ) -> Result:
        index = codes.index(class_code)
        rest = (1.0 - confidence) / (len(codes) - 1)
        probs = {code: (confidence if i == index else rest) for i, code in enumerate(codes)}
        top3 = sorted(probs.items(), key=lambda kv: -kv[1])[:3]
        return Result(
            class_code=class_code,
            class_name=_LABELS[index][1],
            class_index=index,
            confidence=confidence,
            all_probabilities=probs,
            top3=tuple(top3),
            state=state,
            model="test-model",
            frame_id=frame_id,
            timestamp="2026-01-01T00:00:00.000Z",
            latency_ms={"preprocess": latency_ms / 4, "inference": latency_ms / 2, "total": latency_ms},
            fps=5.0,
        )

    return build


class Subscriber:
    """A real MQTT client that records every message on ``topics``."""

    def __init__(self, broker: Broker, topics: list[str], *, qos: int = 1, timeout: float = 10.0):
        self.messages: list[mqtt.MQTTMessage] = []
        self._arrived = threading.Condition()
        subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"sub-{uuid.uuid4().hex[:12]}")
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe([(t, qos) for t in topics])
        self.client.on_subscribe = lambda *args: subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        if not subscribed.wait(timeout):
            self.close()
            raise TimeoutError(f"no SUBACK from the broker on port {broker.port}")

    def _on_message(self, client, userdata, message) -> None:
        with self._arrived:
            self.messages.append(message)
            self._arrived.notify_all()

    def on(self, topic: str) -> list[mqtt.MQTTMessage]:
        """Messages received so far on ``topic``, oldest first."""
        with self._arrived:
            return [m for m in self.messages if m.topic == topic]

    def wait_for(self, topic: str, payload: str | None = None, *, timeout: float = 15.0) -> mqtt.MQTTMessage:
        """The first message on ``topic`` (with ``payload``, if given); AssertionError after ``timeout``."""

        def match():
            return next(
                (
                    m
                    for m in self.messages
                    if m.topic == topic and (payload is None or m.payload.decode() == payload)
                ),
                None,
            )

        with self._arrived:
            found = self._arrived.wait_for(match, timeout)
        assert found is not None, f"no {payload or 'message'} on {topic} within {timeout} s"
        return found

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def mqtt_subscriber():
    """``mqtt_subscriber(broker, topics, qos=1)`` -> a connected, subscribed :class:`Subscriber`."""
    made: list[Subscriber] = []

    def make(broker: Broker, topics: list[str], **kwargs) -> Subscriber:
        made.append(Subscriber(broker, topics, **kwargs))
        return made[-1]

    yield make
    for sub in made:
        sub.close()


@pytest.fixture(scope="session")
def default_model_dir() -> Path:
    """The shipped default model, whose card carries the referral rule picked on val and measured on test."""
    return Path(__file__).parents[2] / daemon_default_model_dir()  # the daemon's default, wherever it is set
