"""The embedded sudoku bases (dflow/assets/sudoku_{mask,uniform}) are small, load with ``dflow
sample`` from their own meta, and score in the band they were chosen for: clearly above chance on
the held-out test puzzles, clearly short of solving them all (room for RL).

The full measurement (264 test puzzles x 4 samples) is in docs/pretraining.md; here 48 puzzles x
1 sample keep the test quick, so the bands are wide: one such evaluation has a standard error of at
most 0.5 / sqrt(48) = 0.07.
"""

from __future__ import annotations

import pytest

from tests.embedded_bases import sample_embedded_base

BASES = {"sudoku_mask": "MaskSource", "sudoku_uniform": "UniformSource"}


@pytest.mark.parametrize("name", sorted(BASES))
def test_embedded_sudoku_base_loads_and_scores(name, tmp_path, monkeypatch):
    result = sample_embedded_base(name, "sudoku", BASES[name], tmp_path, monkeypatch)
    # chance is 1/4 per blank cell and about 4^-8 per puzzle; the full evaluation reads 0.71 / 0.76
    # cells and 0.18 / 0.23 solved (docs/pretraining.md)
    assert 0.5 < result["cells/overall"] < 0.95
    assert 0.0 < result["acc/overall"] < 0.6
