"""device.config: one test per validation rule, defaults, the example file and CLI overrides."""
from pathlib import Path

import pytest
import yaml

from device.config import (
    Config,
    ConfigError,
    ModelConfig,
    check_camera_path,
    check_model_dir,
    config_from_dict,
    default_model_dir,
    load_config,
    to_dict,
    with_overrides,
)

EXAMPLE = Path(__file__).parents[2] / "device" / "config.example.yaml"


def test_defaults_load_with_no_file():
    cfg = load_config(None)
    assert isinstance(cfg, Config)
    assert cfg.device_id.startswith("dermedge-")
    assert cfg.model.dir == default_model_dir()
    assert cfg.camera.source == "picamera2"
    assert (cfg.http.host, cfg.http.port) == ("127.0.0.1", 5000)
    assert cfg.mqtt.prefix == "dermedge" and cfg.mqtt.enabled


def test_empty_yaml_file_gives_defaults(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("# nothing set\n")
    assert to_dict(load_config(path)) == to_dict(load_config(None))


def test_unknown_key_is_named():
    with pytest.raises(ConfigError, match=r"^mqtt\.prt: unknown key"):
        config_from_dict({"mqtt": {"prt": 1883}})
    with pytest.raises(ConfigError, match=r"^cameras: unknown key"):
        config_from_dict({"cameras": {}})


def test_wrong_type_is_named():
    with pytest.raises(ConfigError, match=r"^mqtt\.port: expected int, got str"):
        config_from_dict({"mqtt": {"port": "1883"}})
    with pytest.raises(ConfigError, match=r"^http\.enabled: expected bool, got int"):
        config_from_dict({"http": {"enabled": 1}})
    with pytest.raises(ConfigError, match=r"^camera: expected a mapping"):
        config_from_dict({"camera": "usb"})


def test_int_is_accepted_for_float():
    assert config_from_dict({"camera": {"fps": 15}}).camera.fps == 15.0


def test_bad_enum_is_named():
    with pytest.raises(ConfigError, match=r"^camera\.source: expected one of picamera2, opencv, folder, memory, got 'usb'"):
        config_from_dict({"camera": {"source": "usb"}})
    with pytest.raises(ConfigError, match=r"^overlay\.mode"):
        config_from_dict({"overlay": {"mode": "hdmi"}})


def test_out_of_range_value_is_named():
    with pytest.raises(ConfigError, match=r"^mqtt\.qos: must be 0, 1 or 2, got 3"):
        config_from_dict({"mqtt": {"qos": 3}})
    with pytest.raises(ConfigError, match=r"^postprocess\.min_confidence"):
        config_from_dict({"postprocess": {"min_confidence": 1.5}})


def test_trusted_proxies_and_allowed_hosts_are_checked_and_named():
    cfg = config_from_dict({"http": {"trusted_proxies": ["127.0.0.1", "::1"], "allowed_hosts": ["pi.example.org"]}})
    assert cfg.http.trusted_proxies == ("127.0.0.1", "::1") and cfg.http.allowed_hosts == ("pi.example.org",)
    assert load_config(None).http.trusted_proxies == ()  # no proxy is believed unless configured
    with pytest.raises(ConfigError, match=r"^http\.trusted_proxies: 'nginx' is not an IP address"):
        config_from_dict({"http": {"trusted_proxies": ["nginx"]}})
    for bad in ("https://pi.example.org", "pi.example.org:5000", "pi example"):
        with pytest.raises(ConfigError, match=r"^http\.allowed_hosts: .* is not a host name or address"):
            config_from_dict({"http": {"allowed_hosts": [bad]}})


def test_password_without_username_is_an_error():
    with pytest.raises(ConfigError, match=r"^mqtt\.password: set without mqtt\.username"):
        config_from_dict({"mqtt": {"password": "secret"}})
    cfg = config_from_dict({"mqtt": {"username": "pi", "password": "secret"}})
    assert cfg.mqtt.username == "pi"


def test_folder_source_needs_a_path():
    with pytest.raises(ConfigError, match=r"^camera\.path: required"):
        config_from_dict({"camera": {"source": "folder"}})


def test_memory_source_needs_a_frames_file(tmp_path):
    with pytest.raises(ConfigError, match=r"^camera\.path: required when camera\.source is memory"):
        config_from_dict({"camera": {"source": "memory"}})
    cfg = config_from_dict({"camera": {"source": "memory", "path": str(tmp_path / "none.npy")}})
    with pytest.raises(ConfigError, match=r"^camera\.path: frames file not found"):
        check_camera_path(cfg.camera)


def test_mqtt_heartbeat_must_be_positive():
    assert config_from_dict({}).mqtt.heartbeat_s == 10.0
    with pytest.raises(ConfigError, match=r"^mqtt\.heartbeat_s: must be > 0, got 0.0"):
        config_from_dict({"mqtt": {"heartbeat_s": 0}})


def test_drm_overlay_needs_picamera2():
    with pytest.raises(ConfigError, match=r"^overlay\.mode: drm needs camera\.source picamera2"):
        config_from_dict({"overlay": {"mode": "drm"}, "camera": {"source": "opencv"}})


def test_missing_model_dir_names_the_path(tmp_path):
    missing = tmp_path / "no-such-model"
    with pytest.raises(ConfigError, match=f"model.dir: model folder not found: {missing}"):
        check_model_dir(ModelConfig(dir=str(missing)))
    missing.mkdir()
    with pytest.raises(ConfigError, match=f"model card not found: {missing / 'card.json'}"):
        check_model_dir(ModelConfig(dir=str(missing)))


def test_file_errors_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("mqtt: [unclosed\n")
    with pytest.raises(ConfigError, match=f"^{bad}: not valid YAML"):
        load_config(bad)
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text("http:\n  port: eighty\n")
    with pytest.raises(ConfigError, match=f"^{wrong}: http.port: expected int, got str"):
        load_config(wrong)


def _keys(tree: dict, prefix: str = "") -> set[str]:
    out = set()
    for key, value in tree.items():
        out.add(prefix + key)
        if isinstance(value, dict):
            out |= _keys(value, f"{prefix}{key}.")
    return out


def test_example_yaml_loads_and_documents_every_key():
    cfg = load_config(EXAMPLE)
    assert cfg.model.dir == default_model_dir()
    documented = _keys(yaml.safe_load(EXAMPLE.read_text()))
    assert documented == _keys(to_dict(Config()))
    # Apart from device_id the example shows the defaults.
    assert {**to_dict(cfg), "device_id": ""} == {**to_dict(Config()), "device_id": ""}


def test_overrides_apply_and_are_validated():
    cfg = with_overrides(load_config(None), camera_source="folder", camera_path="imgs", http_port=0,
                         mqtt_enabled=False, model_dir=None, device_id="bench-1")
    assert (cfg.camera.source, cfg.camera.path, cfg.http.port) == ("folder", "imgs", 0)
    assert cfg.mqtt.enabled is False and cfg.device_id == "bench-1"
    assert cfg.model.dir == default_model_dir()  # None means "flag not given"
    with pytest.raises(ConfigError, match=r"^mqtt\.port: must be between 1 and 65535"):
        with_overrides(cfg, mqtt_port=0)
    with pytest.raises(ConfigError, match="unknown override 'camera_colour'"):
        with_overrides(cfg, camera_colour="red")
