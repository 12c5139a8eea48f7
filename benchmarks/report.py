"""Results on disk: ``<date>-<host>[-quick].json``, a Markdown report and a latency plot beside it.

Every figure in the report is read from the results dict of the same run; nothing is typed in.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

# Figure without pyplot: no GUI backend and no global state, so it runs headless (and on a Pi).
from matplotlib.figure import Figure

from device.stages import STAGE_HELP

NA = "n/a"


def stem(results: dict) -> str:
    host = re.sub(r"[^A-Za-z0-9_.-]+", "-", results["environment"]["host"]) or "host"
    suffix = "-quick" if results["mode"] == "quick" else ""
    return f"{results['created'][:10]}-{host}{suffix}"


def write_report(results: dict, out: Path) -> dict[str, Path]:
    """Write the JSON, the plot and the Markdown into ``out``; returns their paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    name = stem(results)
    paths = {"json": out / f"{name}.json", "plot": out / f"{name}-latency.png", "markdown": out / f"{name}.md"}
    paths["json"].write_text(json.dumps(results, indent=2, allow_nan=False) + "\n")
    plot_latency(results, paths["plot"])
    paths["markdown"].write_text(markdown(results, plot_name=paths["plot"].name))
    return paths


def plot_latency(results: dict, path: Path) -> None:
    """p50 latency and frames/s against interpreter threads, one line per model and variant."""
    fig = Figure(figsize=(10, 4))
    ax_ms, ax_fps = fig.subplots(1, 2)
    for model in results["models"]:
        for variant, rows in model["latency"].items():
            xs = [r["threads"] for r in rows]
            style = "-o" if variant == "int8" else "--s"
            ax_ms.plot(xs, [r["p50_ms"] for r in rows], style, label=f"{model['name']} {variant}")
            ax_fps.plot(xs, [r["fps"] for r in rows], style, label=f"{model['name']} {variant}")
    threads = sorted({r["threads"] for m in results["models"] for rows in m["latency"].values() for r in rows})
    for ax, label in ((ax_ms, "p50 latency (ms)"), (ax_fps, "frames/s")):
        ax.set_xticks(threads)
        ax.set_xlabel("interpreter threads")
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
    ax_ms.legend(fontsize=8)
    fig.suptitle(f"TFLite latency vs threads on {results['environment']['cpu']} ({results['mode']} run)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


# --- Markdown -----------------------------------------------------------------------


def _f(value, digits: int = 2, suffix: str = "") -> str:
    if value is None:
        return NA
    if isinstance(value, bool):
        return "yes" if value else "**no**"
    if isinstance(value, (int, float)):
        return f"{value:,.{digits}f}{suffix}"
    return str(value)


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines + [""]


def markdown(results: dict, *, plot_name: str) -> str:
    env, models, targets = results["environment"], results["models"], results["targets"]
    lines = [
        f"# DermEdge benchmark: {env['host']}, {results['created'][:10]} ({results['mode']} run)",
        "",
        ("Measured by `python -m benchmarks` in one run; every figure below comes from "
        f"`{stem(results)}.json` beside this file. Timings are medians over repeated runs "
        f"({results['plan']['tflite']['repeats']} runs of {results['plan']['tflite']['iters']} calls after "
        f"{results['plan']['tflite']['warmup']} warm-up calls for TFLite). Screening aid, not a diagnosis."),
        "",
        f"Reproduce: `{results['command']}`",
        "",
        "## Environment",
        "",
    ]
    libs = ", ".join(f"{k} {v}" for k, v in env["libraries"].items() if v)
    lines += _table(["", ""], [
        ["CPU", env["cpu"]], ["cores (usable)", f"{env['cores']} ({env['cores_usable']})"], ["OS", env["os"]],
        ["Python", env["python"]], ["libraries", libs],
        ["load average at start / end", f"{env['load_average_start']} / {env.get('load_average_end')}"],
    ])
    lines += ["## Models", ""]
    lines += _table(["model", "architecture", "input", "test-time view", "params", "MACs/frame", "int8 file",
                     "float file"], [
        [m["name"] + (" (default)" if m["default"] else ""), f"{m['arch']} w{_f(m['width_mult'])}",
         f"{m['input'][0]}x{m['input'][1]}", m.get("view", m.get("tta", "none")), _f(m["params"], 0),
         _f(m["macs"] and m["macs"] / 1e6, 1, " M"),
         _f(m["int8_size_bytes"] / 1024, 1, " KiB"),
         _f(m["float_size_bytes"] and m["float_size_bytes"] / 1024, 1, " KiB")] for m in models])
    lines += ["## TFLite latency (device engine, fitted input)", "",
              ("`Engine.infer_pixels`: normalize, quantize, invoke, dequantize on an image already fitted to the "
               "model input, once per test-time view the card asks for (MACs/frame counts all views)."), ""]
    lines += _table(["model", "variant", "threads", "p50 ms", "p95 ms", "frames/s", "GMAC/s"], [
        [m["name"], variant, str(r["threads"]), _f(r["p50_ms"]), _f(r["p95_ms"]), _f(r["fps"], 1),
         _f(r["gmacs_per_s"])] for m in models for variant, rows in m["latency"].items() for r in rows])
    lines += [f"![latency vs threads]({plot_name})", ""]
    lines += _baseline_section(results)
    lines += _daemon_section(models, targets)
    lines += _budget_section(models)
    lines += _accuracy_section(models)
    lines += ["## Peak memory (RSS)", ""]
    lines += _table(["model", "daemon (`device run`)", "`device predict` on the sample images"], [
        [m["name"], _f((m["memory"].get("daemon") or {}).get("peak_rss_mb"), 1, " MB"),
         _f((m["memory"].get("predict") or {}).get("peak_rss_mb"), 1, " MB")] for m in models])
    lines += _estimate_section(results)
    if results["notes"] or results["errors"]:
        lines += ["## Notes", ""] + [f"- {n}" for n in results["notes"]]
        lines += [f"- **error** {e}" for e in results["errors"]] + [""]
    return "\n".join(lines)


def _baseline_section(results: dict) -> list[str]:
    models, baselines, targets = results["models"], results["baselines"], results["targets"]
    lines = ["## Against the original serving (Keras `model.predict`, float32, one frame at a time)", ""]
    if not baselines:
        return lines + ["Not measured in this run (see notes).", ""]
    lines += [("Same architecture rebuilt with `train.models.build_model` (random weights; latency does not "
              "depend on them), Keras on its default threading."), ""]
    lines += _table(["baseline", "keras", "p50 ms", "p95 ms", "frames/s"], [
        [label, f"{b['keras']} ({b['keras_backend']})", _f(b["p50_ms"]), _f(b["p95_ms"]), _f(b["fps"], 1)]
        for label, b in baselines.items()])
    rows = []
    for m in models:
        s = m.get("speedup")
        if not s:
            continue
        same = f"{_f(s.get('vs_same_arch'), 1, 'x')} (target {targets['same_arch_speedup']:g}x: " \
               f"{_f(s.get('vs_same_arch_meets_target'))})" if "vs_same_arch" in s else NA
        seed = _f(s.get("vs_seed_cnn"), 1, "x")
        if "vs_seed_cnn_meets_target" in s:
            seed += f" (target {targets['default_vs_seed_speedup']:g}x: {_f(s['vs_seed_cnn_meets_target'])})"
        rows.append([m["name"], f"{_f(s['int8_p50_ms'])} ({s['threads']} threads)", same,
                     f"{seed} vs {s.get('seed_baseline', NA)}"])
    lines += _table(["model", "int8 p50 ms", "speed-up vs same architecture", "speed-up vs seed CNN"], rows)
    return lines


def _daemon_section(models: list[dict], targets: dict) -> list[str]:
    lines = ["## End to end: the daemon", "",
             ("`python -m device run` as its own process on the in-memory camera (`camera.source: memory`: "
              "640x480 frames already decoded, handed over as fast as the daemon takes them), no screen and no "
              "HTTP viewer (so no overlay is drawn or encoded), results to a real local mosquitto (on change, at "
              "most `mqtt.max_rate_hz`), HTTP on loopback. Frames/s from the daemon's `/health` frame counter "
              "over a window after warm-up. Inference-only is `Engine.infer` on the same frames (crop, resize, "
              "normalize, invoke) at the same thread count, run in this process in one-second slices between "
              "the daemon's (paused meanwhile), so both sides see the same machine."), ""]
    rows = [[m["name"], str(d["threads"]), _f(d["fps"], 1), _f(d["inference_only_fps"], 1),
             f"{_f(d['ratio'])} (target {targets['daemon_ratio']:g}: {_f(d['ratio'] >= targets['daemon_ratio'])})",
             _f(d.get("cpu_ratio")), _f(d["mqtt_messages_per_s"], 1)]
            for m in models if (d := m.get("daemon"))]
    if not rows:
        return lines + ["Not measured in this run (see notes).", ""]
    lines += [("CPU ratio: inference-only CPU time per call over the daemon's per frame (all its threads, from "
               "`/proc`), over the same slices; on a machine other work keeps busy it moves less than the "
               "frames/s ratio, which depends on how the scheduler shares the cores."), ""]
    return lines + _table(["model", "threads", "daemon frames/s", "inference-only frames/s", "ratio", "CPU ratio",
                           "MQTT messages/s"], rows)


def _budget_section(models: list[dict]) -> list[str]:
    """The daemon's frame, stage by stage (device.stages via /metrics), and the Pi ESTIMATE of it."""
    models = [m for m in models if (m.get("daemon") or {}).get("stages")]
    if not models:
        return []
    lines = ["## The frame budget: where a daemon frame goes", "",
             ("Each stage's time per classified frame over the daemon's measured window, from its own "
              "`/metrics` (`dermedge_stage_seconds`). The prepare thread grabs the newest frame, measures its "
              "quality and fits it to the model input (`Engine.prepare`) while the loop runs the interpreter "
              "on the frame before (`Engine.run`); the loop's *wait* is what is left of that beyond the "
              "inference it overlapped, so a frame's wall time is the loop's stages. Overlay, display and jpeg "
              "run only for a screen or an HTTP viewer. *Other* is the wall time per frame that no loop stage "
              "accounts for (the loop's own bookkeeping). Raspberry Pi columns are ESTIMATES: "
              "every stage scaled by the factor that scales inference to that board (see the Raspberry Pi "
              "section)."), ""]
    for m in models:
        d = m["daemon"]
        budget, pi = d["stages"], d.get("pi") or {}
        boards = list(pi.values())
        lines += [f"**{m['name']}** ({d['threads']} threads):", ""]
        rows = [[stage, _f(row["ms_per_frame"], 3), _f(row["runs_per_frame"]), _f(row["ms_per_run"], 3)]
                + [_f(b["ms_per_frame"][stage], 2) for b in boards] + [STAGE_HELP.get(stage, "")]
                for stage, row in budget["per_stage"].items()]
        if "prepare_ms" in budget:  # reports before the two-stage pipeline have no prepare thread
            rows.append(["prepare, beside the loop", _f(budget["prepare_ms"], 3), "", ""]
                        + [_f(budget["prepare_ms"] * b["factor"], 2) for b in boards]
                        + ["grab + quality + fit, on the prepare thread while the loop infers"])
        rows.append(["**loop, all stages**", _f(budget["loop_ms"], 3), "", ""]
                    + [_f(b["loop_ms"], 2) for b in boards] + ["wait to mqtt: the frame's own time"])
        rows.append(["other", _f(budget["other_ms"], 3), "", ""] + [_f(b["other_ms"], 2) for b in boards]
                    + ["the wall time no stage accounts for"])
        rows.append(["**frame (wall)**", _f(budget["frame_ms"], 3), "", ""] + [_f(b["frame_ms"], 2) for b in boards]
                    + ["1 / daemon frames/s"])
        lines += _table(["stage", "ms/frame", "runs/frame", "ms/run"]
                        + [f"{b['board'].split(' (')[0]} ESTIMATE ms/frame" for b in boards] + ["what"], rows)
        for b in boards:
            lines.append(f"- **{b['board']}** ESTIMATE: end to end {_f(b['end_to_end_fps'], 0)} frames/s beside "
                         f"{_f(b['inference_only_fps'], 0)} inference-only (invoke) frames/s "
                         f"(x{b['factor']:.3g} on every stage).")
        lines.append("")
    lines += [("The camera caps the Pi figures: picamera2 delivers `camera.fps` frames/s (10 by default), so "
               "frames/s above it are headroom for other work, not frames classified."), ""]
    return lines


def _accuracy_section(models: list[dict]) -> list[str]:
    lines = ["## Accuracy on the lesion-grouped test split (device inference path)", ""]
    rows = []
    for m in models:
        acc = m.get("accuracy")
        if not acc:
            continue
        for key, label in (("float", "float"), ("int8", "int8"), ("framing_square", "int8, square crop"),
                           ("framing_zoom75", "int8, 75% zoom")):
            if key in acc:
                a = acc[key]
                rows.append([m["name"], label, str(a["n"]), _f(a["accuracy"], 4), _f(a["balanced_accuracy"], 4),
                             _f(a["macro_f1"], 4), _f(a["macro_auc"], 4), _f(a["melanoma_recall"], 4)])
            if key == "int8" and "int8_float_agreement" in acc:
                rows[-1][1] += f" (agrees with float on {acc['int8_float_agreement']:.2%})"
    if not rows:
        return lines + ["Not measured in this run (see notes).", ""]
    return lines + _table(["model", "variant", "n", "accuracy", "balanced acc.", "macro-F1", "macro AUC",
                           "melanoma recall"], rows)


def _estimate_section(results: dict) -> list[str]:
    models = [m for m in results["models"] if m.get("estimates")]
    lines = ["## Raspberry Pi: ESTIMATE, not measured", ""]
    if not models:
        return lines + ["No model records its MACs.", ""]
    refs = models[0]["estimates"]
    ref = next(iter(refs.values()))["reference"]
    lines += [("Scaled by MACs per frame from one published figure: fps = reference fps x factors x "
              "reference MACs / model MACs. Small models usually reach fewer MAC/s than the reference, "
              "so treat these as upper bounds for planning."), "",
              f"Reference: {ref['model']} ({ref['macs'] / 1e6:.0f} M MACs) at {ref['fps']} FPS; {ref['source']}.", ""]
    for est in refs.values():
        factors = "; ".join(f"x{f['value']:.3g} ({f['why']})" for f in est["reference"]["factors"])
        lines.append(f"- **{est['board']}**: {factors}.")
    lines.append("")
    lines += _table(["model", "MACs/frame"] + [f"{e['board']} ESTIMATE frames/s" for e in refs.values()], [
        [m["name"], _f(m["macs"] / 1e6, 1, " M")] + [_f(e["fps"], 0) for e in m["estimates"].values()]
        for m in models])
    lines += ["Replace the estimate with a measurement on the Pi itself:", "", f"    {results['measure_on_pi']}", ""]
    return lines
