"""The ablation miniature runs end to end (smoke budget) and writes its table."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("trl")


@pytest.mark.slow
def test_ablation_smoke_writes_the_table(tmp_path):
    from benchmarks.ablation_synthetic import SETTINGS, main

    report = main(["--smoke", "--workdir", str(tmp_path), "--table", str(tmp_path / "table.md")])
    assert {row["setting"] for row in report["rows"]} == set(SETTINGS)
    for row in report["rows"]:
        assert 0.0 <= row["accuracy"] <= 1.0
        # Question quality is measured exactly for the settings trained to ask (sq_ratio > 0).
        asks = SETTINGS[row["setting"]]["sq_ratio"] > 0
        assert ("grounded" in row) == asks and ("well_formed" in row) == asks
    text = (tmp_path / "table.md").read_text()
    for setting in SETTINGS.values():
        assert setting["label"] in text
    assert json.loads((tmp_path / "ablation.json").read_text())["rows"] == report["rows"]
