"""`.ci/run` prints the versions CI tested with: its `pip list | grep` must match every package it names."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

CI_SCRIPT = Path(__file__).resolve().parents[1] / ".ci" / "run"


def test_ci_version_listing_matches_every_package_it_names():
    """pip lists `huggingface_hub` with an underscore: a pattern spelled `huggingface-hub` silently drops it."""
    line = next(line for line in CI_SCRIPT.read_text().splitlines() if "pip list" in line and "grep -iE" in line)
    pattern = re.search(r"grep -iE '([^']+)'", line).group(1)
    names = re.search(r"\^\((.*)\) ", pattern).group(1).split("|")
    listing = subprocess.run([sys.executable, "-m", "pip", "list"], capture_output=True, text=True, check=False)
    if listing.returncode != 0:
        pytest.skip(f"pip is not available in this environment: {listing.stderr[-300:]}")
    matched = [row.split()[0] for row in listing.stdout.splitlines() if re.match(pattern, row, re.IGNORECASE)]

    def canonical(name: str) -> str:  # the spelling of a name or of its pattern, `[-_]` included
        return re.sub(r"\[-_\]|[-_.]", "-", name).lower()

    installed = {canonical(row.split()[0]) for row in listing.stdout.splitlines()[2:] if row.strip()}
    expected = {canonical(name) for name in names} & installed  # job 2's environment has no TRL, PEFT, ...
    assert {"huggingface-hub", "torch", "transformers"} <= expected
    assert {canonical(name) for name in matched} == expected
