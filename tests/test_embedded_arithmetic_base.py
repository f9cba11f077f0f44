"""The embedded arithmetic bases (dflow/assets/arithmetic_{mask,uniform}) are small, load with ``dflow
sample`` from their own meta and write answers that parse and score.

The full measurement (200 test problems x 4 samples) is in docs/pretraining.md; here 48 problems x
1 sample keep the test quick, so the band is wide: one such evaluation has a standard error of at
most 0.5 / sqrt(48) = 0.07.
"""

from __future__ import annotations

import pytest

from tests.embedded_bases import sample_embedded_base

BASES = {"arithmetic_mask": "MaskSource", "arithmetic_uniform": "UniformSource"}


@pytest.mark.parametrize("name", sorted(BASES))
def test_embedded_arithmetic_base_loads_and_scores(name, tmp_path, monkeypatch):
    result = sample_embedded_base(name, "arithmetic", BASES[name], tmp_path, monkeypatch)
    # a random answer almost never parses as worked steps (reward 0); the full evaluation reads a
    # mean partial reward well above 0.2 (the format credit) and a strict accuracy in the 5-50 % band
    # (docs/pretraining.md)
    assert result["reward"] > 0.1
    assert result["acc/overall"] < 0.5
