"""DermEdge device CLI.

    python -m device run [--config FILE] [--model DIR] [--source folder|opencv|picamera2] [--path P]
                         [--http-port N] [--mqtt-host H] [--mqtt-port N] [--no-mqtt]
                         [--overlay none|opencv|drm] [--max-frames N]
    python -m device predict [--model DIR] [--config FILE] [--json] FILE_OR_DIR...
    python -m device check-config FILE
    python -m device demo [--model DIR] [--http-port N] [--no-mqtt] [--max-frames N] [--state-dir DIR]

Exit codes: 0 success, 1 a runtime failure (or an image that could not be read), 2 a bad
config, model or argument (the message names the key or file).
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from device.auth import load_token
from device.card import ModelCard, verify_model_file
from device.config import CARD_FILE, Config, check_model_dir, load_config, with_overrides
from device.predict import expand_paths, load_model, predict_files
from device.signature import check_model_signature
from device.types import Result

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2
# ConfigError and CardError are ValueErrors; a missing file is an OSError.
_INPUT_ERRORS = (ValueError, OSError, ImportError)


def _setup_logging(level: str) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def run(config_path: Path | None, overrides: dict, *, max_frames: int | None) -> int:
    """Run the daemon until SIGINT/SIGTERM."""
    from device.daemon import Daemon  # imports Flask and paho, which predict does not need

    try:
        cfg = with_overrides(load_config(config_path), **overrides)
    except _INPUT_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    _setup_logging(cfg.log_level)
    daemon = Daemon(cfg, config_path=config_path, overrides=overrides, max_frames=max_frames)
    try:
        return daemon.run()
    except _INPUT_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT


def predict(model_dir: str | None, config_path: Path | None, paths: list[str], *, as_json: bool) -> int:
    """Classify image files and folders; one line (or JSON object) per image on stdout."""

    try:
        cfg = with_overrides(load_config(config_path), model_dir=model_dir)
        files = expand_paths(paths)
        model = load_model(cfg)
    except _INPUT_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    code = EXIT_OK
    for path, outcome in predict_files(model.engine, model.upload, files):
        if isinstance(outcome, Exception):
            print(f"error: {outcome}", file=sys.stderr)  # the message names the file
            code = EXIT_FAILED
        elif as_json:
            print(json.dumps({"file": str(path), **outcome.to_dict()}), flush=True)
        else:
            print(result_text(path, outcome), flush=True)
    if not as_json:
        print(model.engine.card.disclaimer)
    return code


def result_text(path: Path, result: Result) -> str:
    """One image's result as the page and the overlay say it: the headline, the class and its
    top-3 only where the frame says something about the lesion, then the advice on its own line."""
    line = f"{path}: {result.headline} [{result.state}]"
    if result.shows_class:
        top3 = ", ".join(f"{c} {p:.0%}" for c, p in result.top3)
        line = f"{path}: {result.headline} ({result.class_code}) {result.confidence:.1%} [{result.state}]  top-3: {top3}"
    return f"{line}\n  -> {result.advice}" if result.advice else line


def check_config(config_path: Path) -> int:
    """Validate a config file, the model it names (card, sha256, signature) and the token file."""
    try:
        cfg: Config = load_config(config_path)
        folder = check_model_dir(cfg.model)
        card = ModelCard.load(folder / CARD_FILE)
        model_path = verify_model_file(card, folder)
        signature = check_model_signature(folder, cfg.model)
        load_token(cfg.http)
    except _INPUT_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(f"ok: {config_path} (device {cfg.device_id}, model {card.name} at {model_path}, {signature})")
    return EXIT_OK


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m device", description="DermEdge device: screening aid, "
                                     "not a diagnosis.")
    sub = parser.add_subparsers(dest="command", required=True)

    p_run = sub.add_parser("run", help="run the daemon (camera, overlay, MQTT, HTTP)")
    p_run.add_argument("--config", type=Path, default=None, help="YAML config (default: built-in defaults)")
    p_run.add_argument("--model", dest="model_dir", type=str, default=None, help="model folder")
    p_run.add_argument("--source", dest="camera_source", type=str, default=None,
                       choices=("folder", "opencv", "picamera2"))
    p_run.add_argument("--path", dest="camera_path", type=str, default=None,
                       help="image folder or video file for the folder/opencv source")
    p_run.add_argument("--http-port", dest="http_port", type=int, default=None)
    p_run.add_argument("--mqtt-host", dest="mqtt_host", type=str, default=None)
    p_run.add_argument("--mqtt-port", dest="mqtt_port", type=int, default=None)
    p_run.add_argument("--no-mqtt", dest="mqtt_enabled", action="store_const", const=False, default=None)
    p_run.add_argument("--overlay", dest="overlay_mode", type=str, default=None, choices=("none", "opencv", "drm"))
    p_run.add_argument("--max-frames", type=int, default=None, help="stop after N classified frames")

    p_pred = sub.add_parser("predict", help="classify image files once (no camera, broker or server)")
    p_pred.add_argument("--model", dest="model_dir", type=str, default=None, help="model folder")
    p_pred.add_argument("--config", type=Path, default=None, help="YAML config (thresholds)")
    p_pred.add_argument("--json", action="store_true", help="one JSON object per image")
    p_pred.add_argument("paths", nargs="+", metavar="FILE_OR_DIR")

    p_check = sub.add_parser("check-config", help="validate a config file and its model")
    p_check.add_argument("config", type=Path)

    p_demo = sub.add_parser("demo", help="the daemon on the bundled sample images, with a private "
                            "MQTT broker when mosquitto is installed (make demo)")
    p_demo.add_argument("--model", dest="model_dir", type=str, default=None, help="model folder")
    p_demo.add_argument("--http-port", dest="http_port", type=int, default=None)
    p_demo.add_argument("--no-mqtt", dest="mqtt_enabled", action="store_const", const=False, default=None)
    p_demo.add_argument("--max-frames", type=int, default=None, help="stop after N classified frames")
    p_demo.add_argument("--state-dir", type=str, default=None,
                        help="keep captures here (default: a temporary folder removed at the end)")
    return parser


_RUN_OVERRIDES = ("model_dir", "camera_source", "camera_path", "http_port", "mqtt_host", "mqtt_port",
                  "mqtt_enabled", "overlay_mode")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "run":
        overrides = {key: getattr(args, key) for key in _RUN_OVERRIDES if getattr(args, key) is not None}
        return run(args.config, overrides, max_frames=args.max_frames)
    if args.command == "demo":
        from device.demo import demo

        overrides = {key: getattr(args, key) for key in ("model_dir", "http_port", "mqtt_enabled")
                     if getattr(args, key) is not None}
        return demo(run, overrides, max_frames=args.max_frames, state_dir=args.state_dir)
    if args.command == "predict":
        return predict(args.model_dir, args.config, args.paths, as_json=args.json)
    return check_config(args.config)


if __name__ == "__main__":
    sys.exit(main())
