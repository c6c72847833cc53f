"""The embedded default (`python -m recipes.run_tiny`) and the ablation miniature run end to end on smoke budgets."""

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


@pytest.mark.slow
def test_readme_main_command_runs_end_to_end_on_a_small_budget(tmp_path, capsys):
    """`python -m recipes.run_tiny` (the README's main command) on a tiny budget: data, towers, both stages, export,
    reload with trust_remote_code, accuracy and self-generated questions reported."""
    from recipes.run_tiny import main

    report = main(["--workdir", str(tmp_path), "--num-train", "32", "--num-eval", "4", "--lm-steps", "2",
                   "--stage2-epochs", "0.5"])
    printed = capsys.readouterr().out
    assert "Held-out answer accuracy" in printed and "it asks:" in printed
    assert 0.0 <= report["accuracy"] <= 1.0 and 0.0 <= report["accuracy_llava_prompt"] <= 1.0
    assert report["num_questions"] == 12
    assert (tmp_path / "outputs" / "tiny" / "merged" / "config.json").is_file()
    assert (tmp_path / "outputs" / "tiny" / "report.json").is_file()
    assert isinstance(report["self_questioning"]["questions"], list)
