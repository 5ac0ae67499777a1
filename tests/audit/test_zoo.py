"""The zoo recipe, the benchmark's metrics, and ``abd audit-bench`` on a small real zoo."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from abd.audit.zoo import audit_bench, cross_entropy, tpr_at_fpr, zoo_recipe


def test_packaged_recipes_are_valid_varied_and_disjoint() -> None:
    from collections import Counter

    recipe, dev = zoo_recipe(), zoo_recipe(split="dev")
    for r in (recipe, dev):
        triggers = {c.trigger for c in r.values()}
        assert len(triggers - {"none"}) == 11 and "none" in triggers
        assert len({c.model for c in r.values()}) >= 2
        assert len({c.target for c in r.values() if c.trigger != "none"}) >= 4  # not always class 0
        assert len({c.poison_rate for c in r.values()}) >= 3
    counts = Counter(c.trigger for c in recipe.values())
    assert len(recipe) >= 60 and counts["none"] >= 20 and min(counts.values()) >= 3  # the held-out zoo's size
    assert {c.seed for c in recipe.values()}.isdisjoint({c.seed for c in dev.values()})  # no teacher seed shared
    with pytest.raises(ValueError, match="unknown zoo split"):
        zoo_recipe(split="test")


def test_tpr_at_fpr_and_cross_entropy() -> None:
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    scores = np.array([0.1, 0.2, 0.3, 0.9, 0.8, 0.95, 0.4, 0.99])
    assert tpr_at_fpr(labels, scores, fpr=0.0) == 0.5  # above 0.9 (the highest clean score): 2 of 4
    assert tpr_at_fpr(labels, scores, fpr=0.25) == 1.0  # above 0.3, one clean model flagged
    assert cross_entropy(np.array([1, 0]), np.array([1.0, 0.0])) == pytest.approx(1e-12, abs=1e-11)  # clipped
    assert cross_entropy(np.array([1, 0]), np.array([0.5, 0.5])) == pytest.approx(math.log(2))


@pytest.mark.slow
def test_audit_bench_on_a_small_zoo(backdoored_teacher_dir: Path, tmp_path: Path) -> None:
    from abd.attacks.config import TeacherConfig
    from abd.attacks.teacher import train_teacher

    zoo = tmp_path / "zoo"
    shutil.copytree(backdoored_teacher_dir, zoo / "grid")
    for seed in (0, 1):
        train_teacher(TeacherConfig(trigger="none", epochs=4, seed=seed, device="cpu"), zoo / f"clean{seed}",
                      progress=False)
    fast = {"mmbd": {"starts": 4, "steps": 150}}
    result = audit_bench(zoo, ["mmbd"], tmp_path / "bench", options=fast, progress=False)
    s = result["detectors"]["mmbd"]
    assert (s["n_backdoored"], s["n_clean"]) == (1, 2)
    grid = next(r for r in result["rows"] if r["teacher"] == "grid")
    clean = [r["score"] for r in result["rows"] if r["teacher"] != "grid"]
    assert s["auc"] == pytest.approx(np.mean([(grid["score"] > c) + 0.5 * (grid["score"] == c) for c in clean]))
    assert s["target_acc"] == float(grid["suspect"] == 0)
    saved = json.loads((tmp_path / "bench" / "audit_bench.json").read_text())
    assert saved["detectors"]["mmbd"]["auc"] == s["auc"] and saved["split"] == "heldout"
    assert set(s) >= {"auc", "tpr_at_5fpr", "ce", "target_acc", "seconds_per_teacher", "n_clean", "n_backdoored"}
    # a second bench with the same options reuses every row; other options re-run the detector
    again = audit_bench(zoo, ["mmbd"], tmp_path / "bench", options=fast, progress=False)
    assert again["rows"] == result["rows"]
    (tmp_path / "bench" / "audit_bench.json").unlink()  # as if interrupted: the journal of rows remains
    assert audit_bench(zoo, ["mmbd"], tmp_path / "bench", options=fast, progress=False, workers=2)["rows"] == \
        result["rows"]
    other = audit_bench(zoo, ["mmbd"], tmp_path / "bench", options={"mmbd": {"starts": 2, "steps": 20}},
                        progress=False)
    assert [r["score"] for r in other["rows"]] != [r["score"] for r in result["rows"]]
    assert "| mmbd |" in (tmp_path / "bench" / "audit_bench.md").read_text()
    assert (tmp_path / "bench" / "roc.png").stat().st_size > 0
