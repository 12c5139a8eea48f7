"""device.model_watch: a change to the model folder is reported once, after it has settled."""
from __future__ import annotations

import os

from device.model_watch import ModelWatch


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_file_rewritten_in_place_is_reported_once_after_it_settles(tmp_path):
    (tmp_path / "model.tflite").write_bytes(b"a" * 100)
    clock = Clock()
    watch = ModelWatch(tmp_path, settle_s=1.0, clock=clock)
    assert not watch.changed()
    with open(tmp_path / "model.tflite", "r+b") as fh:  # same inode, as cp over it
        fh.truncate(0)
    assert not watch.changed()  # seen, not yet settled
    clock.now = 0.5
    (tmp_path / "model.tflite").write_bytes(b"b" * 50)  # still being written: the wait starts again
    assert not watch.changed()
    clock.now = 1.2
    assert not watch.changed()
    clock.now = 1.6
    assert watch.changed()
    clock.now = 5.0
    assert not watch.changed()  # once


def test_a_symlinked_folder_pointed_elsewhere_is_a_change(tmp_path):
    for name in ("v1", "v2"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "card.json").write_text(name)
    os.symlink(tmp_path / "v1", tmp_path / "current")
    clock = Clock()
    watch = ModelWatch(tmp_path / "current", settle_s=1.0, clock=clock)
    os.symlink(tmp_path / "v2", tmp_path / "current.new")
    os.replace(tmp_path / "current.new", tmp_path / "current")  # the atomic swap docs/updating-models.md shows
    assert not watch.changed()
    clock.now = 1.5
    assert watch.changed()
