"""MQTT output: results as JSON, a retained online/offline status, Home Assistant discovery.

Topics, under ``<prefix>/<device_id>/``:

- ``result``: :meth:`Result.to_dict` as JSON, not retained. Sent when what a subscriber acts on
  changes (class, state or referral), at most ``max_rate_hz`` messages a second: a change that
  comes sooner waits out the interval and goes out then, as the newest Result, unless it has
  reverted meanwhile. An unchanged Result is repeated every ``heartbeat_s`` as a sign of life
  (:class:`ResultThrottle`; docs/mqtt.md).
- ``capture``: a saved case capture (its id, links, class and time), not retained.
- ``status``: ``online`` (retained) on every connect; the broker publishes the retained last
  will ``offline`` if the connection dies, and :meth:`MqttPublisher.stop` publishes it on a
  clean stop.

paho's own network thread connects, and reconnects with backoff, in the background
(``connect_async`` + ``loop_start`` + ``reconnect_delay_set``). :meth:`publish_result` only
queues a message, never waits on the broker and never raises, so a broker that is down
cannot slow or stop inference; while disconnected it just returns False.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import threading
import time

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from device.config import ConfigError, MqttConfig
from device.state import LiveState
from device.types import Result

_log = logging.getLogger(__name__)

ONLINE = "online"
OFFLINE = "offline"
# Reconnect backoff bounds (s): paho doubles the delay per failed attempt up to the maximum,
# so publishing resumes within about RECONNECT_MAX_S of the broker's return.
RECONNECT_MIN_S = 1
RECONNECT_MAX_S = 8
# QoS 1/2 messages waiting for the broker's ack at most; more are refused, not buffered.
MAX_QUEUED = 100
# How long stop() waits for "offline" to leave the socket.
STOP_TIMEOUT_S = 2.0


class ResultThrottle:
    """Decides which Results go out: on change, at most one per ``min_interval_s``, and an
    unchanged one every ``heartbeat_s``. Pure logic on the caller's clock (``now`` in seconds)."""

    def __init__(self, min_interval_s: float, heartbeat_s: float):
        self.min_interval_s = min_interval_s
        self.heartbeat_s = heartbeat_s
        self._sent_key: tuple | None = None  # change_key of the last Result sent
        self._sent_at = -math.inf
        self._waiting: Result | None = None  # a change held back by the rate limit

    @staticmethod
    def change_key(result: Result) -> tuple:
        """What a subscriber acts on: the class, the state and whether to refer."""
        return result.class_code, result.state, result.refer

    def offer(self, result: Result, now: float) -> Result | None:
        """The Result to send now (``result``), or None: held back (a change, until :meth:`due`)
        or not worth sending (unchanged, no heartbeat due)."""
        if now - self._sent_at < self.min_interval_s:
            changed = self.change_key(result) != self._sent_key
            self._waiting = result if changed else None  # a change that reverted needs no message
            return None
        if self.change_key(result) != self._sent_key or now - self._sent_at >= self.heartbeat_s:
            return result
        self._waiting = None
        return None

    def due(self, now: float) -> Result | None:
        """The held-back change, once the interval since the last message has passed."""
        if self._waiting is not None and now - self._sent_at >= self.min_interval_s:
            return self._waiting
        return None

    def sent(self, result: Result, now: float) -> None:
        self._sent_key, self._sent_at, self._waiting = self.change_key(result), now, None

    def reset(self) -> None:
        """After a (re)connect: the next Result goes out at once, changed or not."""
        self._sent_key, self._sent_at, self._waiting = None, -math.inf, None


class MqttPublisher:
    """Publishes results and status for one device.

    Args:
        cfg: the ``mqtt`` config section.
        device_id: topic level and MQTT client id.
        model_name: shown in the Home Assistant device info.
        state: when given, receives the ``mqtt`` component status and publish error counts.
    """

    def __init__(self, cfg: MqttConfig, device_id: str, *, model_name: str, state: LiveState | None = None):
        self._cfg = cfg
        self._device_id = device_id
        self._model_name = model_name
        self._state = state
        base = f"{cfg.prefix}/{device_id}"
        self.result_topic = f"{base}/result"
        self.status_topic = f"{base}/status"
        self.capture_topic = f"{base}/capture"
        self._throttle = ResultThrottle(1.0 / cfg.max_rate_hz, cfg.heartbeat_s)
        self._client: mqtt.Client | None = None
        self._connected = False
        self._stopping = False
        self._lock = threading.Lock()
        self._warned_unreachable = False  # one WARNING per outage, retries at DEBUG

    @property
    def connected(self) -> bool:
        return self._connected

    def discovery_configs(self) -> dict[str, dict]:
        """Home Assistant MQTT discovery: config topic -> payload, one sensor each for the result (the
        headline: a class, or why there is none), its confidence and its advice (docs/results.md)."""
        device = {
            "identifiers": [self._device_id],
            "name": f"DermEdge {self._device_id}",
            "manufacturer": "DermEdge",
            "model": self._model_name,
        }
        common = {
            "state_topic": self.result_topic,
            "availability_topic": self.status_topic,
            "payload_available": ONLINE,
            "payload_not_available": OFFLINE,
            "device": device,
        }
        prefix = f"{self._cfg.discovery_prefix}/sensor/{self._device_id}"
        return {
            f"{prefix}/class/config": {
                **common,
                "name": "Result",
                "unique_id": f"{self._device_id}_class",
                "value_template": "{{ value_json.headline }}",
                # state, advice and disclaimer ride along as attributes: the class alone is not a diagnosis
                "json_attributes_topic": self.result_topic,
                "json_attributes_template": (
                    "{{ {'class_code': value_json.class_code, 'state': value_json.state, "
                    "'refer': value_json.refer, 'advice': value_json.advice, "
                    "'disclaimer': value_json.disclaimer} | tojson }}"
                ),
                "icon": "mdi:magnify-scan",
            },
            f"{prefix}/confidence/config": {
                **common,
                "name": "Confidence",
                "unique_id": f"{self._device_id}_confidence",
                # only where the result shows a class; "None" is Home Assistant's "unknown"
                "value_template": ("{{ (value_json.confidence * 100) | round(1) if value_json.state in "
                                   "('ok', 'uncertain') else none }}"),
                "unit_of_measurement": "%",
                "state_class": "measurement",
                "icon": "mdi:percent",
            },
            f"{prefix}/advice/config": {
                **common,
                "name": "Advice",
                "unique_id": f"{self._device_id}_advice",
                "value_template": "{{ value_json.advice or 'none' }}",
                "icon": "mdi:message-alert-outline",
            },
        }

    def start(self) -> None:
        """Start connecting in the background; returns at once, whether or not the broker is up.

        Raises ConfigError when the TLS certificate files cannot be loaded.
        """
        if not self._cfg.enabled:
            self._set_status("disabled")
            return
        if self._client is not None:
            return
        cfg = self._cfg
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self._device_id)
        client.will_set(self.status_topic, OFFLINE, qos=cfg.qos, retain=True)
        if cfg.username is not None:
            client.username_pw_set(cfg.username, cfg.password)
        if cfg.tls:
            try:
                client.tls_set(ca_certs=cfg.ca_certs, certfile=cfg.certfile, keyfile=cfg.keyfile)
            except (OSError, ValueError) as err:
                raise ConfigError(f"mqtt.tls: cannot load the certificate files ({err})") from err
        client.reconnect_delay_set(min_delay=RECONNECT_MIN_S, max_delay=RECONNECT_MAX_S)
        client.max_queued_messages_set(MAX_QUEUED)
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        self._stopping = False
        self._set_status("connecting")
        client.connect_async(cfg.host, cfg.port, keepalive=cfg.keepalive)
        client.loop_start()
        self._client = client
        _log.info(
            "MQTT: connecting to %s:%d in the background (topics %s/...)",
            cfg.host,
            cfg.port,
            self.result_topic.rsplit("/", 1)[0],
        )

    def publish_result(self, result: Result) -> bool:
        """Offer ``result`` to the result topic (:class:`ResultThrottle`); whether one was queued."""
        if self._client is None or not self._connected:
            return False
        with self._lock:
            return self._send(self._throttle.offer(result, time.monotonic()))

    def flush(self) -> bool:
        """Send a change the rate limit held back, once its interval has passed; for a caller that
        runs even when no new frames come (the daemon's supervisor). Whether one was queued."""
        if self._client is None or not self._connected:
            return False
        with self._lock:
            return self._send(self._throttle.due(time.monotonic()))

    def _send(self, result: Result | None) -> bool:
        """Queue ``result`` (None: nothing to send); call with the lock held. Never raises."""
        client = self._client
        if result is None or client is None:
            return False
        try:
            info = client.publish(self.result_topic, json.dumps(result.to_dict()), qos=self._cfg.qos)
            if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                self._count_error()
                _log.debug("MQTT: result not queued (%s)", mqtt.error_string(info.rc))
                return False
            self._throttle.sent(result, time.monotonic())
            return True
        except Exception:  # noqa: BLE001 - the pipeline must never see a publishing failure
            self._count_error()
            _log.warning("MQTT: publishing a result failed", exc_info=True)
            return False

    def publish_capture(self, capture: dict) -> bool:
        """Queue the event for a saved capture (not rate-limited); whether it was queued."""
        client = self._client
        if client is None or not self._connected:
            return False
        try:
            info = client.publish(self.capture_topic, json.dumps(capture), qos=self._cfg.qos)
        except Exception:  # noqa: BLE001 - saving the capture must not fail because of MQTT
            _log.warning("MQTT: publishing a capture event failed", exc_info=True)
            info = None
        if info is None or info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            self._count_error()
            return False
        return True

    def stop(self) -> None:
        """Publish the retained ``offline`` status, disconnect and stop the network thread."""
        client, self._client = self._client, None
        if client is None:
            return
        self._stopping = True
        if self._connected:
            info = client.publish(self.status_topic, OFFLINE, qos=self._cfg.qos, retain=True)
            try:
                info.wait_for_publish(timeout=STOP_TIMEOUT_S)
            except (ValueError, RuntimeError) as err:
                _log.warning("MQTT: could not publish the offline status (%s)", err)
        client.disconnect()
        client.loop_stop()
        self._connected = False
        self._set_status("stopped")

    # --- paho callbacks (network thread) ----------------------------------------------

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            self._set_status("disconnected", f"refused: {reason_code}")
            _log.warning(
                "MQTT: broker %s:%d refused the connection: %s", self._cfg.host, self._cfg.port, reason_code
            )
            return
        client.publish(self.status_topic, ONLINE, qos=self._cfg.qos, retain=True)
        if self._cfg.home_assistant:
            for topic, payload in self.discovery_configs().items():
                client.publish(topic, json.dumps(payload), qos=self._cfg.qos, retain=True)
        with self._lock:
            self._throttle.reset()  # the first result after a (re)connect goes out at once
        self._connected = True
        self._warned_unreachable = False
        self._set_status("connected")
        _log.info("MQTT: connected to %s:%d", self._cfg.host, self._cfg.port)

    def _on_connect_fail(self, client, userdata) -> None:
        # paho calls this from inside its ``except OSError`` around the connect, so the
        # exception being handled is the reason (refused, unknown host, timed out...).
        err = sys.exc_info()[1]
        reason = (err.strerror or str(err)) if isinstance(err, OSError) else "unreachable"
        address = f"{self._cfg.host}:{self._cfg.port}"
        self._set_status("disconnected", f"cannot reach {address}: {reason}")
        if self._warned_unreachable:
            _log.debug("MQTT: still cannot reach %s (%s), retrying", address, reason)
            return
        self._warned_unreachable = True
        _log.warning("MQTT: cannot reach the broker at %s (%s); results are not published until it "
                     "answers, retrying every %d s at most (mqtt.enabled: false or --no-mqtt turns MQTT off)",
                     address, reason, RECONNECT_MAX_S)

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        was_connected, self._connected = self._connected, False
        if self._stopping or not was_connected:  # a refused connection was reported by _on_connect
            return
        self._set_status("disconnected", str(reason_code))
        _log.warning("MQTT: lost the broker (%s); reconnecting in the background", reason_code)

    # --- helpers ----------------------------------------------------------------------

    def _set_status(self, status: str, detail: str = "") -> None:
        if self._state is not None:
            self._state.set_component("mqtt", status, detail)

    def _count_error(self) -> None:
        if self._state is not None:
            self._state.count_error("mqtt_publish")
