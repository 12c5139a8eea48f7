"""Fill the generated regions of README.md and docs/*.md from their sources: the model cards, the
current benchmark run (``benchmarks.index.current_run``) and the code tree.

    python -m docs.build            # rewrite the regions (make docs)
    python -m docs.build --check    # exit 1 naming every region that differs from its source

A region is ``<!-- generated:NAME -->`` ... ``<!-- /generated -->``; what lies between is replaced
by ``REGIONS[NAME]()``. Figures written between the markers by hand are overwritten, so a figure
that comes from a card or a benchmark has one home and the docs cannot drift from it.
"""
from __future__ import annotations

import argparse
import ast
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path

import yaml

from benchmarks.index import current_run
from device.card import ModelCard
from device.config import default_model_name

REPO = Path(__file__).resolve().parents[1]
MODELS = REPO / "models"
RESULTS = REPO / "benchmarks" / "results"
PACKAGES = ("train", "quantize", "device", "benchmarks")
_REGION = re.compile(r"(<!-- generated:([\w-]+) -->\n)(.*?)(<!-- /generated -->)", re.DOTALL)


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _card(name: str) -> ModelCard:
    return ModelCard.load(MODELS / name / "card.json")


def _fast_variant() -> str:
    roles = yaml.safe_load((MODELS / "shelf.yaml").read_text())["roles"]
    return next(name for name, spec in roles.items() if spec["role"] == "fast variant")


def _test_figures(card: ModelCard) -> str:
    m = card.metrics["int8"]
    return (f"{_pct(m['accuracy'])} accuracy, {_pct(m['balanced_accuracy'])} balanced accuracy, "
            f"melanoma recall {_pct(m['per_class']['mel']['recall'])}, macro AUC {m['macro_auc']:.3f}")


def _speed(name: str) -> str:
    run = current_run(RESULTS, MODELS)
    entry = run.model(name)
    p50 = ", ".join(f"{r['p50_ms']:.2f} ms at {r['threads']} thread{'s' if r['threads'] > 1 else ''}"
                    for r in entry["latency"]["int8"])
    pi4 = entry.get("estimates", {}).get("pi4", {}).get("fps")
    out = f"Int8 p50 {p50} ({run.cpu}, run {run.stem})"
    return out + (f"; Raspberry Pi 4 estimate {pi4:.0f} frames/s (scaled by MACs)" if pi4 else "")


def default_summary() -> str:
    """README: what ships, its test figures and its speed, from its card and the current run."""
    default, fast = default_model_name(MODELS), _fast_variant()
    card, fast_card = _card(default), _card(fast)
    lines = [(f"The default model is `{default}` ({card.architecture['arch']}, "
              f"{card.architecture['macs'] / 1e6:.0f} M MACs at {card.input.height}x{card.input.width}). "
              f"On the held-out lesion-grouped test split ({card.metrics['n']:,} images, int8, through the "
              f"device's engine): {_test_figures(card)}. {_speed(default)}.")]
    if card.referral is not None:
        r = card.referral
        lines.append(f"Its card's referral rule (\"see a dermatologist\" when P({')+P('.join(r.classes)}) >= "
                     f"{r.threshold:.3f}) refers {_pct(r.sensitivity)} of {', '.join(r.classes)} lesions on test at "
                     f"{_pct(r.specificity)} specificity.")
    lines.append(f"The fast variant `{fast}` ({fast_card.architecture['macs'] / 1e6:.0f} M MACs): "
                 f"{_test_figures(fast_card)}. {_speed(fast)}.")
    return "\n".join(lines) + "\n"


def benchmark_table() -> str:
    """docs/benchmarks.md: the current run, every model it measured."""
    run = current_run(RESULTS, MODELS)
    lines = [(f"Current run: [`{run.stem}`](../benchmarks/results/{run.stem}.md) ({run.created[:10]}, {run.cpu}), "
              f"measured with `{run.command}`."), "",
             ("| model | int8 p50 ms (threads) | daemon frames/s | inference-only frames/s | ratio | peak RSS MB "
              "(daemon / predict) | test accuracy / balanced | centred square | 75% zoom | Pi 4 estimate |"),
             "|---|---|---|---|---|---|---|---|---|---|"]
    for entry in run.data["models"]:
        p50 = ", ".join(f"{r['p50_ms']:.2f} ({r['threads']})" for r in entry["latency"]["int8"])
        daemon, memory, acc = entry.get("daemon") or {}, entry.get("memory") or {}, entry.get("accuracy") or {}

        def pair(view: str, acc=acc) -> str:
            fig = acc.get(view)
            return f"{_pct(fig['accuracy'])} / {_pct(fig['balanced_accuracy'])}" if fig else "n/a"

        rss = "/".join(f"{(memory.get(k) or {}).get('peak_rss_mb', 0):.0f}" for k in ("daemon", "predict"))
        pi4 = entry.get("estimates", {}).get("pi4", {}).get("fps")
        lines.append(f"| {entry['name']} | {p50} | {daemon.get('fps', 0):.0f} | {daemon.get('inference_only_fps', 0):.0f} "
                     f"| {daemon.get('ratio', 0):.2f} | {rss} | {pair('int8')} | {pair('framing_square')} | "
                     f"{pair('framing_zoom75')} | {f'{pi4:.0f} frames/s' if pi4 else 'n/a'} |")
    return "\n".join(lines) + "\n"


def uploads_summary() -> str:
    """docs/benchmarks.md: the newest hostile-load run."""
    runs = sorted((p for p in RESULTS.glob("*.json") if "hostile" in json.loads(p.read_text())), key=lambda p: p.stem)
    path = runs[-1]
    data = json.loads(path.read_text())
    refused = [h for h in data["hostile"] if h.get("expected") != 200]
    good, idle = data["good_load"], data["idle"]
    idle_text = "; ".join(f"{i['idle']} idle connections: /health in {i['health_s']:.2f} s" for i in idle)
    return (f"Latest run: [`{path.stem}`](../benchmarks/results/{path.stem}.md) ({data['date']}, "
            f"`{data['model']}`): peak RSS {data['peak_rss_mb']:.0f} MB (after start-up "
            f"{data['baseline']['rss_mb']:.0f} MB); {sum(h['as_expected'] for h in refused)} of {len(refused)} "
            f"over-budget images answered as expected; {good['ok']}/{good['uploads']} ordinary uploads answered "
            f"(p99 {good['p99_ms']:.0f} ms); {idle_text}.\n")


def gate_rates() -> str:
    """docs/not-a-lesion.md: the default's not-a-lesion gate, from its card (threshold and report-part rates)."""
    default = default_model_name(MODELS)
    gate = _card(default).gate
    if gate is None:
        return f"The default `{default}` has no not-a-lesion gate: its results never say \"not a lesion\".\n"
    report = gate.rates["report"]
    per_class = ", ".join(f"{group.rsplit(':', 1)[1]} {_pct(row['rejected'])}" for group, row in report.items()
                          if group.startswith("lesion:ham10000:"))
    lines = [f"The default `{default}`: {gate.method}; threshold {gate.threshold:.4f}.", "",
             "| held out from fitting and threshold (report part) | images | rejected as not a lesion |",
             "|---|---|---|"]
    for key, label in (("lesion:ham10000", "HAM10000 test lesions"), ("lesion:ham10000:mel", "HAM10000 test melanomas"),
                       ("lesion:isic2017", "ISIC 2017 test lesions (other clinics)"),
                       ("lesion:isic2017:mel", "ISIC 2017 test melanomas"), ("everyday", "everyday photos"),
                       ("bare_skin", "bare skin around HAM10000 test lesions"),
                       ("made", "made frames (blank, paper, blurred, exposure, hair, ink)")):
        if key in report:
            lines.append(f"| {label} | {report[key]['n']:,} | {_pct(report[key]['rejected'])} |")
    lines += ["", f"HAM10000 test lesions by class: {per_class}."]
    return "\n".join(lines) + "\n"


# what each of train.models' families is; the figures come from the card of a model trained with it
_FAMILIES = {"seed_cnn": "the design's compact fully-convolutional CNN",
             "concat_resnet": "the design's ResNet with concatenation skips and 1x1 transitions, L2, global pooling",
             "edgenet": "ours: MobileNetV2-style inverted residuals with ReLU6, fully convolutional, int8-friendly"}


def families() -> str:
    """docs/training.md: the from-scratch families, sized by the cards of models trained with them."""
    cards = {}
    for path in sorted(REPO.glob("*/*/card.json")):
        if path.parts[-3] in ("models", "experiments"):
            card = ModelCard.load(path)
            cards.setdefault(card.architecture.get("arch"), (card, path.parent.relative_to(REPO)))
    lines = []
    for arch, what in _FAMILIES.items():
        card, where = cards[arch]
        lines.append(f"- `{arch}` ({what}): {card.architecture['params'] / 1e6:.2f} M parameters, "
                     f"{card.architecture['macs'] / 1e6:,.0f} M MACs at {card.input.height}x{card.input.width} "
                     f"(`{where}`)")
    return "\n".join(lines) + "\n"


def _first_line(path: Path) -> str:
    doc = ast.get_docstring(ast.parse(path.read_text())) or ""
    first = doc.strip().split("\n\n")[0].replace("\n", " ").split(". ")[0].rstrip(".") or "(no docstring)"
    return re.sub(r":\w+:`([^`]+)`", r"`\1`", first).replace("``", "`")  # reST roles and literals as Markdown


def layout() -> str:
    """docs/layout.md: every module of the Python packages with the first sentence of its docstring."""
    lines = []
    for package in PACKAGES:
        lines += [f"### `{package}/`", ""]
        for path in sorted((REPO / package).glob("*.py")):
            if path.name != "__init__.py":
                lines.append(f"- `{path.name}`: {_first_line(path)}")
        lines.append("")
    return "\n".join(lines)


REGIONS: dict[str, Callable[[], str]] = {
    "default-summary": default_summary,
    "benchmark-table": benchmark_table,
    "uploads-summary": uploads_summary,
    "layout": layout,
    "families": families,
    "gate-rates": gate_rates,
}


def doc_files() -> list[Path]:
    return [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def render(text: str, *, where: str = "") -> str:
    """``text`` with every region refilled; an unknown region name raises naming it."""
    def fill(m: re.Match) -> str:
        name = m.group(2)
        if name not in REGIONS:
            raise KeyError(f"{where}: unknown generated region {name!r}; known: {sorted(REGIONS)}")
        return m.group(1) + REGIONS[name]() + m.group(4)
    return _REGION.sub(fill, text)


def stale(files: list[Path] | None = None) -> list[str]:
    """``file: region`` for every region whose committed text differs from its source."""
    out = []
    for path in files or doc_files():
        text = path.read_text()
        for old, new in zip(_REGION.finditer(text), _REGION.finditer(render(text, where=str(path)))):
            if old.group(3) != new.group(3):
                out.append(f"{path.relative_to(REPO)}: {old.group(2)}")
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m docs.build", description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if a region is stale")
    args = parser.parse_args(argv)
    if args.check:
        found = stale()
        for line in found:
            print(f"stale: {line} (run: make docs)")
        return 1 if found else 0
    for path in doc_files():
        text = path.read_text()
        new = render(text, where=str(path))
        if new != text:
            path.write_text(new)
            print(f"updated {path.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
