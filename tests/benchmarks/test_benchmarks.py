"""The benchmark harness: its arithmetic by hand, and a quick run end to end on the tiny model.

The quick run uses real parts: the device engine, ``python -m device run`` and ``predict`` as
child processes, a real mosquitto on a free port, Keras for the baseline. Nothing here asserts a
speed (targets are for the full run); it asserts that every figure was measured and is sane.
"""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from benchmarks.__main__ import main
from benchmarks.accuracy import reframe
from benchmarks.daemon import frame_budget, stage_sums
from benchmarks.estimate import PI4, PI5, estimate_fps, pi_estimates, pi_frame_budget
from benchmarks.stats import RunStats, combine, median, percentile, run_stats
from benchmarks.suite import BenchOptions
from device.state import LiveState

# --- arithmetic -------------------------------------------------------------------


def test_percentiles_interpolate_linearly_between_ranks():
    samples = list(range(1, 11))  # 1..10
    assert percentile(samples, 50) == pytest.approx(5.5)
    assert percentile(samples, 95) == pytest.approx(9.55)  # rank 0.95 * 9 = 8.55 -> 9 + 0.55 * (10 - 9)
    assert median([3.0, 1.0, 2.0]) == 2.0


def test_percentile_of_nothing_is_an_error():
    with pytest.raises(ValueError, match="no samples"):
        percentile([], 50)


def test_run_stats_from_call_durations():
    stats = run_stats([0.001, 0.002, 0.003, 0.004])  # seconds
    assert stats.n == 4
    assert stats.p50_ms == pytest.approx(2.5)
    assert stats.mean_ms == pytest.approx(2.5)
    assert stats.fps == pytest.approx(400.0)  # 4 calls in 10 ms


def test_combine_takes_the_median_of_each_statistic_over_runs():
    runs = [RunStats(10, 1.0, 2.0, 1.5, 10.0), RunStats(10, 5.0, 9.0, 6.0, 30.0), RunStats(10, 3.0, 4.0, 3.5, 20.0)]
    timing = combine(runs)
    assert (timing.p50_ms, timing.p95_ms, timing.mean_ms, timing.fps) == (3.0, 4.0, 3.5, 20.0)
    assert timing.runs == tuple(runs)


def test_pi_estimates_scale_the_published_figure_by_macs():
    # Pi 4: 45.5 FPS x (1800 / 1950) = 42.0 FPS at 300 M MACs; a 60 M MAC model is 5x lighter.
    assert estimate_fps(60_000_000, PI4) == pytest.approx(210.0)
    assert estimate_fps(60_000_000, PI5) == pytest.approx(420.0)  # x2 for the Pi 5
    estimates = pi_estimates(60_000_000)
    assert estimates["pi4"]["kind"] == "ESTIMATE"
    assert estimates["pi4"]["latency_ms"] == pytest.approx(1000 / 210.0)
    assert "Q-engineering" in estimates["pi5"]["reference"]["source"]


def _metrics(sums: dict[str, tuple[int, float]]) -> str:
    """/metrics text as device.state writes the frame budget."""
    state = LiveState("m")
    for stage, (count, seconds) in sums.items():
        for _ in range(count):
            state.stages.add(stage, seconds / count)
    return state.metrics_text()


def test_frame_budget_per_classified_frame_from_two_metrics_readings():
    before = stage_sums(_metrics({"infer": (10, 0.040), "fit": (10, 0.010)}))
    assert before["infer"] == (10, pytest.approx(0.040)) and before["jpeg"] == (0, 0.0)
    after = stage_sums(_metrics({"infer": (30, 0.120), "fit": (30, 0.030), "quality": (20, 0.004),
                                 "jpeg": (2, 0.002)}))
    budget = frame_budget(before, after, frames=20, frame_ms=5.5)
    infer = budget["per_stage"]["infer"]
    assert infer["ms_per_frame"] == pytest.approx(4.0) and infer["runs_per_frame"] == 1.0
    assert budget["per_stage"]["jpeg"]["runs_per_frame"] == pytest.approx(0.1)
    assert budget["per_stage"]["jpeg"]["ms_per_run"] == pytest.approx(1.0)
    assert budget["per_stage"]["overlay"]["ms_per_run"] is None  # never ran
    # fit and quality run on the prepare thread, jpeg in HTTP's threads: neither is the loop's
    assert budget["loop_ms"] == pytest.approx(4.0)
    assert budget["prepare_ms"] == pytest.approx(1.0 + 0.2)
    assert budget["other_ms"] == pytest.approx(5.5 - 4.0)
    with pytest.raises(RuntimeError, match="no dermedge_stage_seconds"):
        stage_sums("dermedge_up 1\n")


def test_pi_frame_budget_scales_every_stage_like_inference():
    budget = frame_budget(stage_sums(_metrics({})), stage_sums(_metrics({"infer": (10, 0.020), "quality": (10, 0.005)})),
                          frames=10, frame_ms=2.6)
    pi = pi_frame_budget(budget, 60_000_000)  # 210 inferences/s on a Pi 4: 4.76 ms, 2.38x this 2 ms
    factor = (1000 / 210.0) / 2.0
    assert pi["pi4"]["kind"] == "ESTIMATE" and pi["pi4"]["factor"] == pytest.approx(factor)
    assert pi["pi4"]["ms_per_frame"]["quality"] == pytest.approx(0.5 * factor)
    assert pi["pi4"]["inference_only_fps"] == pytest.approx(210.0)
    assert pi["pi4"]["end_to_end_fps"] == pytest.approx(210.0 * 2.0 / 2.6)  # inference keeps its share
    assert pi["pi5"]["end_to_end_fps"] == pytest.approx(2 * pi["pi4"]["end_to_end_fps"])


def test_estimate_refuses_a_model_without_macs():
    with pytest.raises(ValueError, match="macs"):
        estimate_fps(0, PI4)


def test_options_refuse_unknown_sections_and_bad_counts():
    with pytest.raises(ValueError, match="skip"):
        BenchOptions(skip=("latencyy",))
    with pytest.raises(ValueError, match="threads"):
        BenchOptions(threads=(0,))


def test_cli_refuses_a_folder_without_models(tmp_path, capsys):
    assert main(["--models-dir", str(tmp_path), "--quick", "--out", str(tmp_path / "out")]) == 2
    assert "no model folders" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


# --- quick run, end to end ----------------------------------------------------------


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory, tiny_model_dir, fixture_dir):
    root = tmp_path_factory.mktemp("bench")
    shutil.copytree(tiny_model_dir, root / "models" / "tiny")
    out = root / "results"
    code = main(["--models-dir", str(root / "models"), "--quick", "--threads", "1,2", "--data", str(fixture_dir),
                 "--cache-dir", str(root / "cache"), "--out", str(out)])
    reports = sorted(out.glob("*.json"))
    assert len(reports) == 1, f"expected one JSON report in {out}, found {reports}"
    return code, json.loads(reports[0].read_text()), reports[0]


def test_quick_run_succeeds_without_skips(quick_run):
    code, results, _ = quick_run
    assert results["errors"] == []
    assert results["notes"] == []
    assert code == 0
    assert results["mode"] == "quick"


def test_environment_is_recorded(quick_run):
    env = quick_run[1]["environment"]
    assert env["cpu"] and env["os"] and env["python"]
    assert env["cores"] >= 1
    assert env["libraries"]["numpy"] and env["libraries"]["ai-edge-litert"]


def _assert_timing(t: dict) -> None:
    assert 0 < t["p50_ms"] <= t["p95_ms"]
    assert 0 < t["fps"] < 1e6
    for run in t["runs"]:
        assert run["fps"] == pytest.approx(1000 / run["mean_ms"])  # frames/s follow from the same calls


def test_tflite_latency_is_measured_per_variant_and_thread_count(quick_run):
    (model,) = quick_run[1]["models"]
    assert model["name"] == "tiny" and model["macs"] > 0 and model["int8_size_bytes"] > 0
    assert sorted(model["latency"]) == ["float", "int8"]  # the tiny model ships both
    for rows in model["latency"].values():
        assert [r["threads"] for r in rows] == [1, 2]
        for row in rows:
            _assert_timing(row)
            assert len(row["runs"]) == 2  # quick mode's default repeats
            assert row["gmacs_per_s"] == pytest.approx(model["macs"] / (row["p50_ms"] / 1e3) / 1e9)
    _assert_timing(model["frame_throughput"])


def test_daemon_end_to_end_with_mqtt(quick_run):
    (model,) = quick_run[1]["models"]
    daemon = model["daemon"]
    assert daemon["fps"] > 0 and daemon["inference_only_fps"] > 0
    (run,) = daemon["runs"]
    assert run["ratio"] == pytest.approx(run["fps"] / run["inference_only_fps"])
    assert daemon["ratio"] == run["ratio"]  # the median of the runs' paired ratios
    assert daemon["mqtt_messages_per_s"] > 0  # a real subscriber counted the daemon's results
    assert run["health"]["mqtt"] == "connected" and run["frames"] > 0
    assert run["health"]["camera"] == "ok"
    assert run["cpu_ms_per_frame"] > 0 and run["inference_only_cpu_ms_per_frame"] > 0
    assert daemon["cpu_ratio"] == pytest.approx(run["inference_only_cpu_ms_per_frame"] / run["cpu_ms_per_frame"])
    assert daemon["peak_rss_mb"] > 10


def test_daemon_frame_budget_and_its_pi_estimate(quick_run):
    (model,) = quick_run[1]["models"]
    daemon = model["daemon"]
    stages = daemon["stages"]["per_stage"]
    for stage in ("grab", "quality", "fit", "wait", "infer", "postprocess", "state", "mqtt"):
        assert stages[stage]["runs_per_frame"] == pytest.approx(1.0, abs=0.05), stage
    assert stages["infer"]["ms_per_frame"] > 0
    assert stages["overlay"]["runs_per_frame"] == 0 and stages["jpeg"]["runs_per_frame"] == 0  # nobody watched
    assert 0 < daemon["stages"]["loop_ms"] <= daemon["stages"]["frame_ms"] * 1.05
    assert daemon["stages"]["frame_ms"] == pytest.approx(1000 / daemon["runs"][0]["fps"], rel=0.05)
    for board in ("pi4", "pi5"):
        pi = daemon["pi"][board]
        assert pi["kind"] == "ESTIMATE"
        assert 0 < pi["end_to_end_fps"] < pi["inference_only_fps"] == pytest.approx(model["estimates"][board]["fps"])
    text = quick_run[2].with_suffix(".md").read_text()
    assert "## The frame budget" in text
    assert f"| infer | {stages['infer']['ms_per_frame']:,.3f} |" in text
    assert f"end to end {daemon['pi']['pi4']['end_to_end_fps']:,.0f} frames/s" in text


def test_memory_of_predict_is_measured(quick_run):
    (model,) = quick_run[1]["models"]
    assert model["memory"]["predict"]["peak_rss_mb"] > 10
    assert model["memory"]["daemon"]["peak_rss_mb"] == model["daemon"]["peak_rss_mb"]


def test_accuracy_on_the_cards_test_split(quick_run, tiny_model_dir):
    (model,) = quick_run[1]["models"]
    card = json.loads((tiny_model_dir / "card.json").read_text())
    n_test = sum(card["split"]["counts"]["test"].values())
    for variant in ("float", "int8", "framing_square", "framing_zoom75"):
        figures = model["accuracy"][variant]
        assert figures["n"] == n_test
        for key in ("accuracy", "balanced_accuracy", "macro_f1"):
            assert 0.0 <= figures[key] <= 1.0
    assert 0.0 <= model["accuracy"]["int8_float_agreement"] <= 1.0
    assert "int8, 75% zoom" in quick_run[2].with_suffix(".md").read_text()


def test_reframing_crops_the_centre():
    rgb = np.arange(150 * 200 * 3, dtype=np.int64).reshape(150, 200, 3)
    square = reframe(rgb, None)
    assert square.shape == (150, 150, 3) and (square == rgb[:, 25:175]).all()
    zoom = reframe(rgb, 0.75)
    assert zoom.shape == (112, 150, 3) and (zoom == rgb[19:131, 25:175]).all()


def test_keras_baseline_and_speedups(quick_run):
    results = quick_run[1]
    (model,) = results["models"]
    same_label = f"{model['arch']} {model['input'][0]}x{model['input'][1]} w{model['width_mult']:g}"
    assert set(results["baselines"]) == {same_label, "seed_cnn 90x120 w1"}  # no seed model: the design's
    for baseline in results["baselines"].values():
        _assert_timing(baseline)
    speedup = model["speedup"]
    int8_at_2 = model["latency"]["int8"][1]
    assert speedup["threads"] == 2 and speedup["int8_p50_ms"] == int8_at_2["p50_ms"]
    same = results["baselines"][same_label]["p50_ms"]
    assert speedup["vs_same_arch"] == pytest.approx(same / int8_at_2["p50_ms"])
    assert "vs_seed_cnn_meets_target" not in speedup  # the target applies to the default model only


def test_pi_estimates_in_the_results(quick_run):
    (model,) = quick_run[1]["models"]
    assert model["estimates"]["pi4"]["fps"] == pytest.approx(estimate_fps(model["macs"], PI4))
    assert model["estimates"]["pi5"]["kind"] == "ESTIMATE"


def test_markdown_report_and_plot_beside_the_json(quick_run):
    _, results, json_path = quick_run
    md_path = json_path.with_suffix(".md")
    plot = json_path.with_name(json_path.stem + "-latency.png")
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = md_path.read_text()
    for heading in ("## Environment", "## TFLite latency", "## Against the original serving",
                    "## End to end: the daemon", "## Accuracy", "## Peak memory", "## Raspberry Pi: ESTIMATE"):
        assert heading in text
    assert f"]({plot.name})" in text
    assert results["command"] in text and results["measure_on_pi"] in text
    first = results["models"][0]["latency"]["int8"][0]
    assert f"| tiny | int8 | 1 | {first['p50_ms']:,.2f} |" in text  # the table is the JSON, not typed
