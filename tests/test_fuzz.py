"""A short fuzzing budget in the default run: mutated real files through the reader and the STOW-RS parser.

Each case runs in a child process, so an abort or a hang is counted rather than suffered; anything but a
MedlensError (or, for uploads, a clean per-part report) is a bug. `benchmarks/fuzz.py` runs the long campaigns.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fuzz_harness import run


@pytest.mark.parametrize("target", ["reader", "upload"])
def test_mutated_real_files_only_ever_raise_medlens_errors(data_dir: Path, target: str) -> None:
    tally = run(target, range(100_000, 100_250), str(data_dir), timeout_seconds=10, budget_seconds=20)
    assert tally.cases >= 100, f"only {tally.cases} cases ran in the budget"
    assert tally.outcomes.get("ok", 0) == tally.cases, tally.findings[:5]
