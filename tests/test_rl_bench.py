"""softq.rl.diagnostics.bench: the side-by-side measurement of two checkouts runs, alternates and is saved with the
machine."""

import json

import pytest

from softq.config import ROOT
from softq.rl.diagnostics.bench import save_side_by_side, side_by_side


def test_side_by_side_measures_both_trees_and_saves(tmp_path):
    variants = (("a2c_old", "old", "a2c", {}), ("a2c_bf16", "new", "a2c", {"precision": "bf16"}))
    record = side_by_side(ROOT, reps=1, seconds=0.2, game="CartPole-v1", num_envs=2, what=("a2c",),
                          variants=variants)
    assert set(record["runs"]) == {"a2c_old", "a2c_bf16"} and all(len(v) == 1 for v in record["runs"].values())
    assert all(x > 0 for v in record["runs"].values() for x in v)
    out = save_side_by_side(record, tmp_path, tag="test")
    save_side_by_side(record, tmp_path, tag="test")
    data = json.loads(out.read_text())
    assert len(data["side_by_side"]) == 2 and data["side_by_side"][0]["machine"]["cores"] >= 1


def test_side_by_side_names_a_bad_tree(tmp_path):
    with pytest.raises(ValueError, match="old_root"):
        side_by_side(tmp_path)
