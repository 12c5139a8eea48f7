"""A model's lineage as one resumable command: each member trained (two stages), calibrated and
quantized, then the members averaged in one graph and quantized, and (``gate: true``) the
not-a-lesion gate fitted into it (``train.lesion_gate``), as a lineage file describes.

    python -m train.lineage train/configs/default/lineage.yaml --data PATH/TO/ham10000 \
        --extra PATH/TO/isic2017 --everyday PATH/TO/not-lesion/images               (make default-model)
    python -m train.lineage LINEAGE --data ... --set backbone_weights=imagenet --set self_check_images=

Each step runs the project's own command (``python -m train``, ``train.calibrate``, ``quantize``,
``train.ensemble``) in its own folder under ``--work`` and is recorded in ``<work>/state.json`` when
it ends; running the command again skips what is done and continues a training run that was cut
off (``python -m train --resume``). The models land in ``<work>/models/``, not in ``models/``: the
shelf changes only when someone copies a checked result onto it.
"""
from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

_log = logging.getLogger(__name__)
STATE_FILE = "state.json"


@dataclass(frozen=True)
class Referral:
    threshold: float
    picked_on: str


@dataclass(frozen=True)
class Member:
    name: str  # the model folder it becomes
    stage1: dict  # TrainConfig keys over the lineage's stage-1 file
    stage2: dict  # ... and over its stage-2 file
    tau: float
    temperature: float
    referral: Referral


@dataclass(frozen=True)
class Ensemble:
    name: str
    bias: float
    temperature: float
    referral: Referral


@dataclass(frozen=True)
class Lineage:
    stage1: Path
    stage2: Path
    zoom: float
    members: tuple[Member, ...]
    ensemble: Ensemble
    quantize: dict = field(default_factory=dict)  # extra python -m quantize flags (e.g. max_drop), for every model
    gate: bool = False  # last, fit the not-a-lesion gate into the ensemble's folder

    @classmethod
    def load(cls, path: Path) -> Lineage:
        """A lineage YAML file; a missing key raises naming it."""
        raw = yaml.safe_load(Path(path).read_text())
        try:
            members = tuple(Member(m["name"], dict(m.get("stage1", {})), dict(m.get("stage2", {})),
                                   float(m["calibrate"]["tau"]), float(m["calibrate"]["temperature"]),
                                   Referral(float(m["referral"]["threshold"]), m["referral"]["picked_on"]))
                            for m in raw["members"])
            e = raw["ensemble"]
            ensemble = Ensemble(e["name"], float(e["bias"]), float(e["temperature"]),
                                Referral(float(e["referral"]["threshold"]), e["referral"]["picked_on"]))
            return cls(Path(raw["stage1"]), Path(raw["stage2"]), float(raw["zoom"]), members, ensemble,
                       dict(raw.get("quantize", {})), bool(raw.get("gate", False)))
        except KeyError as err:
            raise ValueError(f"{path}: missing key {err}") from err


@dataclass
class State:
    """What is done: step name -> the folder it produced, kept in ``<work>/state.json``."""

    path: Path
    done: dict[str, str] = field(default_factory=dict)

    @classmethod
    def load(cls, work: Path) -> State:
        path = Path(work) / STATE_FILE
        return cls(path, json.loads(path.read_text()) if path.is_file() else {})

    def record(self, step: str, produced: Path) -> None:
        self.done[step] = str(produced)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.done, indent=1) + "\n")
        tmp.replace(self.path)


def _flags(values: dict) -> list[str]:
    return [arg for key, value in values.items() for arg in (f"--{key.replace('_', '-')}", str(value))]


def _python(*args: str) -> None:
    """Run ``python -m ...`` with this interpreter; a failure stops the lineage naming the command."""
    cmd = [sys.executable, *args]
    _log.info("running %s", " ".join(cmd))
    if subprocess.run(cmd, check=False).returncode != 0:
        raise RuntimeError(f"step failed: {' '.join(cmd)}")


def _only_run(runs: Path) -> Path | None:
    found = sorted(p for p in runs.iterdir() if p.is_dir()) if runs.is_dir() else []
    if len(found) > 1:
        raise RuntimeError(f"{runs}: several runs; remove all but the one to continue")
    return found[0] if found else None


def _train(config: Path, flags: dict, runs: Path, *, resume_flags: dict) -> Path:
    """One training run in its own ``runs`` folder: started, or continued when it was cut off."""
    previous = _only_run(runs)
    if previous is not None and (previous / "last.keras").is_file():
        _python("-m", "train", "--resume", str(previous), "--no-evaluate", *_flags(resume_flags))
        return previous
    if previous is not None:  # cut off before its first epoch ended: nothing to continue
        raise RuntimeError(f"{previous}: a run with no checkpoint; remove it and run again")
    _python("-m", "train", "--config", str(config), "--runs-dir", str(runs), "--no-evaluate", *_flags(flags))
    return _only_run(runs)


def steps(lineage: Lineage, *, data: Path, work: Path, overrides: dict, state: State,
          gate_data: dict | None = None) -> list[tuple[str, Callable[[], Path]]]:
    """The ordered steps, each a name and a function that runs it and returns what it produced."""
    out_models = work / "models"
    zoom = str(lineage.zoom)
    plan: list[tuple[str, Callable[[], Path]]] = []

    def done(step: str) -> Path:
        return Path(state.done[step])

    for m in lineage.members:
        def stage1(m=m) -> Path:
            return _train(lineage.stage1, {"data": data, "name": f"{m.name}-stage1", **m.stage1, **overrides},
                          work / m.name / "stage1", resume_flags={"data": data})

        def stage2(m=m) -> Path:
            init = done(f"{m.name}/stage1") / "best.keras"
            return _train(lineage.stage2, {"data": data, "name": f"{m.name}-stage2", "init_from": init, **m.stage2},
                          work / m.name / "stage2", resume_flags={"data": data})

        def calibrate(m=m) -> Path:
            run = done(f"{m.name}/stage2")
            _python("-m", "train.calibrate", str(run), "--data", str(data), "--zoom", zoom,
                    "--tau", str(m.tau), "--temperature", str(m.temperature))
            return run

        def quantize(m=m) -> Path:
            return _quantize(done(f"{m.name}/calibrate"), m.name, m.referral, data=data, out=out_models, zoom=zoom,
                             extra=lineage.quantize)

        plan += [(f"{m.name}/stage1", stage1), (f"{m.name}/stage2", stage2),
                 (f"{m.name}/calibrate", calibrate), (f"{m.name}/quantize", quantize)]

    e = lineage.ensemble

    def ensemble() -> Path:
        runs = work / e.name / "ensemble"
        if _only_run(runs) is not None:  # cut off half-way: it is quick, so start it again
            raise RuntimeError(f"{runs}: an unfinished ensemble run; remove it and run again")
        _python("-m", "train.ensemble", *(str(done(f"{m.name}/quantize")) for m in lineage.members),
                "--data", str(data), "--name", e.name, "--bias", str(e.bias), "--temperature", str(e.temperature),
                "--runs-dir", str(runs))
        return _only_run(runs)

    def quantize_ensemble() -> Path:
        return _quantize(done(f"{e.name}/ensemble"), e.name, e.referral, data=data, out=out_models, zoom=zoom,
                         extra=lineage.quantize)

    def gate() -> Path:
        folder = done(f"{e.name}/quantize")
        _python("-m", "train.lesion_gate", str(folder), "--data", str(data), *_flags(gate_data or {}))
        return folder

    plan += [(f"{e.name}/ensemble", ensemble), (f"{e.name}/quantize", quantize_ensemble)]
    return plan + ([(f"{e.name}/gate", gate)] if lineage.gate else [])


def _quantize(run: Path, name: str, referral: Referral, *, data: Path, out: Path, zoom: str, extra: dict) -> Path:
    _python("-m", "quantize", str(run), "--checkpoint", "calibrated", "--name", name, "--zoom", zoom,
            "--data", str(data), "--out", str(out), "--referral-threshold", str(referral.threshold),
            "--referral-from", referral.picked_on, *_flags(extra))
    return out / name


def run(lineage_file: Path, *, data: Path, work: Path, overrides: dict | None = None,
        gate_data: dict | None = None) -> Path:
    """Every step not yet done, in order; returns the final model folder."""
    lineage = Lineage.load(lineage_file)
    state = State.load(work)
    plan = steps(lineage, data=data, work=work, overrides=overrides or {}, state=state, gate_data=gate_data)
    for i, (name, step) in enumerate(plan, 1):
        if name in state.done:
            _log.info("[%d/%d] %s: done (%s)", i, len(plan), name, state.done[name])
            continue
        _log.info("[%d/%d] %s", i, len(plan), name)
        state.record(name, step())
    return Path(state.done[plan[-1][0]])


def _override(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"--set expects KEY=VALUE, got {text!r}")
    return key, value


def main(argv=None) -> Path:
    parser = argparse.ArgumentParser(prog="python -m train.lineage", description=__doc__.split("\n\n")[0])
    parser.add_argument("lineage", type=Path, help="lineage YAML (train/configs/default/lineage.yaml)")
    parser.add_argument("--data", type=Path, required=True, help="HAM10000 root")
    parser.add_argument("--extra", type=Path, default=None, help="ISIC 2017 root, for the gate step")
    parser.add_argument("--everyday", type=Path, default=None, help="everyday photos (negatives), for the gate step")
    parser.add_argument("--work", type=Path, default=Path("runs/lineage"), help="runs, state and models (resumable)")
    parser.add_argument("--set", type=_override, action="append", default=[], metavar="KEY=VALUE",
                        help="a stage-1 TrainConfig key for every member, e.g. backbone_weights=imagenet")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        gate_data = {k: v for k, v in (("extra", args.extra), ("everyday", args.everyday)) if v is not None}
        final = run(args.lineage, data=args.data, work=args.work, overrides=dict(args.set), gate_data=gate_data)
    except (ValueError, RuntimeError, FileNotFoundError) as err:
        parser.exit(1, f"python -m train.lineage: {err}\n")
    print(f"wrote {final}; compare it with the shelf, then copy it into models/")
    return final


if __name__ == "__main__":
    main()
