"""The not-a-lesion gate on the int8 file: its threshold, its rates, the refusal rule and the card section.

``train.lesion_gate`` fitted the head and recorded in the run's ``gate.json`` what it was fitted on. Here
the threshold is picked again on the int8 output, through the device engine, on the ``pick`` part (the
rule of ``train.lesion_gate.pick_threshold``), and the rates are measured on the ``report`` part. A model
that turns away too many lesions or lets through too many negatives is refused like one that fails the
accuracy gate.
"""
from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import numpy as np
from tqdm import tqdm

from device.card import Gate, ModelCard, TensorSpec
from device.engine import Engine, model_tensors, open_interpreter
from quantize.gate import GateError
from train import lesion_gate as lg
from train.data import Record, learned_from_val
from train.run import TrainingRun

_log = logging.getLogger(__name__)


def fitted_gate(run: TrainingRun) -> dict | None:
    """The run's ``gate.json`` (written by ``train.lesion_gate``), or None for a run without a gate."""
    path = run.path / lg.GATE_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def output_spec(int8_path: Path) -> TensorSpec | None:
    """The not-a-lesion output's dtype, scale and zero point as the interpreter reads them."""
    interpreter, _ = open_interpreter(int8_path, num_threads=1)
    gate = model_tensors(interpreter)[2]
    return None if gate is None else TensorSpec(dtype=gate.dtype, scale=gate.scale, zero_point=gate.zero_point)


def levels(spec: TensorSpec) -> np.ndarray:
    """Every value the output can take, in (0, 1]; a float output is stepped like a sigmoid's int8."""
    if spec.dtype == "float32":
        return lg.OUTPUT_LEVELS
    info = np.iinfo(spec.dtype)
    values = (np.arange(info.min, info.max + 1) - spec.zero_point) * spec.scale
    return np.unique(values[(values > 0) & (values <= 1)])


def failures(report: dict, limits: lg.Limits) -> list[str]:
    """What the report part's rates miss of ``limits``, one line each."""
    out = []
    for key, limit, most in (("lesion:ham10000", limits.max_lesions, True),
                             ("lesion:ham10000:mel", limits.max_melanomas, True),
                             ("everyday", limits.min_everyday, False), ("bare_skin", limits.min_bare_skin, False)):
        if key not in report:
            continue
        rate = report[key]["rejected"]
        if (rate > limit) if most else (rate < limit):
            out.append(f"{key} rejected {100 * rate:.1f}% ({'most' if most else 'least'} allowed {100 * limit:.1f}%)")
    return out


def gated_images(run: TrainingRun, records: list[Record], *, data: Path, cache_dir: Path | None) -> lg.GateImages:
    """The gate's images for a run that ``train.lesion_gate`` fitted (refused naming the file otherwise)."""
    fitted = fitted_gate(run)
    if fitted is None:
        raise ValueError(f"{run.path / lg.GATE_FILE} not found; fit the gate with python -m train.lesion_gate first")
    return lg.images_for_run(run, records, fitted, data=data, cache_dir=cache_dir)


def gate_card(card: ModelCard, int8_path: Path, run: TrainingRun, images: lg.GateImages, *,
              limits: lg.Limits = lg.DEFAULT_LIMITS, num_threads: int = 2) -> ModelCard:
    """``card`` with its ``gate`` section: threshold picked on the pick part, rates on the report part.
    Raises GateError when the report part misses ``limits``."""
    fitted = fitted_gate(run)
    spec = output_spec(int8_path)
    if fitted is None or spec is None:
        raise ValueError(f"{run.path}: no {lg.GATE_FILE} or the model has no not-a-lesion output; "
                         "fit one with python -m train.lesion_gate first")
    provisional = dataclasses.replace(card, gate=Gate(output=spec, threshold=1.0, method=fitted["method"],
                                                      advice=fitted["advice"]))
    engine = Engine(int8_path, provisional, num_threads=num_threads)
    scored = {}
    for part in ("pick", "report"):
        chosen = images.part(part)
        scores = np.array([engine.infer(p).not_lesion for p in tqdm(chosen.pixels, desc=f"gate {part}", unit="img",
                                                                    leave=False)])
        scored[part] = (chosen, scores)
    threshold = lg.pick_threshold(scored["pick"][1], scored["pick"][0], limits, levels=levels(spec))
    rates = {part: lg.rejection_rates(scores, chosen, threshold) for part, (chosen, scores) in scored.items()}
    missed = failures(rates["report"], limits)
    _log.info("not-a-lesion threshold %.4f; report part: %s", threshold,
              {k: round(v["rejected"], 4) for k, v in rates["report"].items() if ":" not in k or k.count(":") == 1})
    if missed:
        raise GateError(f"not-a-lesion gate failed for {card.name}: " + "; ".join(missed))
    gate = Gate(output=spec, threshold=threshold, advice=fitted["advice"],
                method=f"{fitted['method']}: {fitted['description']}",
                picked_on=(f"the pick part (HAM10000 val, ISIC 2017 val, a quarter of the negatives): the lowest "
                           f"output level rejecting at most {100 * limits.pick_lesions:g}% of lesions and "
                           f"{100 * limits.pick_melanomas:g}% of melanomas"),
                rates={"report": rates["report"], "pick": rates["pick"], "limits": dataclasses.asdict(limits),
                       "candidates": {k: {"threshold": v["threshold"], "negatives_mean": v["negatives_mean"]}
                                      for k, v in fitted["candidates"].items()},
                       **({"caveat": "the model learned from HAM10000 val, part of the pick part: its val lesions may "
                                     "look more lesion-like than unseen ones; the report part is the figure"}
                          if learned_from_val(card.split) else {})})
    return dataclasses.replace(card, gate=gate)
