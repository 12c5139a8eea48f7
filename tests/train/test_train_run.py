"""train.run.RunRecord: meta.json written and read in one place; a record with a key it does not
know, or without one it needs, is refused naming the key and the file."""
from __future__ import annotations

import json

import pytest

from train.run import RECORD_FILE, RunRecord

RECORD = RunRecord(arch="edgenet", input={"height": 30, "width": 40},
                   labels=[{"code": "nv", "name": "Melanocytic nevus"}],
                   normalization={"mean": [1.0, 2.0, 3.0], "std": [4.0, 5.0, 6.0]},
                   model={"family": "edgenet", "params": 10, "macs": 20, "input_shape": [30, 40, 3]},
                   split={"method": "lesion", "seed": 42, "counts": {}}, dataset={"name": "HAM10000"},
                   backend="tensorflow", quantization_aware_training=True)


def test_a_record_reads_back_as_written(tmp_path):
    RECORD.write(tmp_path)
    assert RunRecord.read(tmp_path) == RECORD
    assert RunRecord.read(tmp_path).input_hw == (30, 40)


def test_an_unknown_key_is_named(tmp_path):
    RECORD.write(tmp_path)
    data = json.loads((tmp_path / RECORD_FILE).read_text())
    (tmp_path / RECORD_FILE).write_text(json.dumps({**data, "nromalization": {}}))
    with pytest.raises(ValueError, match=r"meta\.json: unknown key\(s\) nromalization"):
        RunRecord.read(tmp_path)


def test_a_missing_key_is_named(tmp_path):
    RECORD.write(tmp_path)
    data = json.loads((tmp_path / RECORD_FILE).read_text())
    del data["labels"]
    (tmp_path / RECORD_FILE).write_text(json.dumps(data))
    with pytest.raises(ValueError, match="meta.json.*labels"):
        RunRecord.read(tmp_path)
