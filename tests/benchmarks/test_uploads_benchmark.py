"""The hostile-upload benchmark: its uploads really sit at the budget, and a quick end-to-end run
on the tiny model measures every figure (nothing here asserts a memory or speed target)."""
from __future__ import annotations

import json

from benchmarks.hostile import boundary_uploads
from benchmarks.uploads import main
from device.decode import plan_decode

MB = 2**20


def test_boundary_uploads_sit_just_under_and_just_over_the_budget():
    budget = 8 * MB
    uploads = boundary_uploads(budget, kinds=("png-rgb8", "webp-lossless-rgba"))
    assert [u.name for u in uploads] == ["png-rgb8-under", "png-rgb8-over", "webp-lossless-rgba-under",
                                         "webp-lossless-rgba-over"]
    for under, over in zip(uploads[::2], uploads[1::2]):
        assert plan_decode(under.data).cost_bytes <= budget < plan_decode(over.data).cost_bytes
        assert over.width == under.width + 1 and (under.expected, over.expected) == (200, 422)


def test_a_quick_run_reports_peak_memory_load_and_idle_connections(tmp_path, tiny_model_dir):
    code = main(["--model", str(tiny_model_dir), "--concurrency", "2", "--rounds", "1", "--idle", "20",
                 "--good", "10", "--decode-memory-mb", "16", "--out", str(tmp_path)])
    report = json.loads(next(tmp_path.glob("*-uploads.json")).read_text())
    assert code == 0, report
    assert report["decode_memory_mb"] == 16 and report["baseline"]["rss_mb"] > 0 and report["peak_rss_mb"] >= report["baseline"]["peak_rss_mb"]
    assert {r["name"] for r in report["hostile"]} >= {"png-rgb8-6000", "png-rgb8-under", "png-rgb8-over"}
    assert all(r["as_expected"] for r in report["hostile"])
    assert report["good_load"]["ok"] == 10 and report["idle"][0]["health_ok"]
    assert "Peak RSS" in next(tmp_path.glob("*-uploads.md")).read_text()
