"""Every example script runs (with --smoke); a new example without a smoke entry fails the coverage test."""

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SMOKE = {"quickstart.py": ["--smoke"], "warm_start_digits.py": ["--smoke"]}


def test_every_example_has_a_smoke_entry():
    assert {p.name for p in EXAMPLES.glob("*.py")} == set(SMOKE)


@pytest.mark.parametrize("name", sorted(SMOKE))
def test_example_runs(name):
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / name), *SMOKE[name]], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert "accuracy" in result.stdout
