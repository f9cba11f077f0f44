"""Smoke test of benchmarks/sampler_speed.py at toy sizes: it runs, its no-recording loop draws exactly
what Sampler.rollout draws (else the overhead it reports would compare different work), and it reports
the ratios it promises. No timing is asserted."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import torch

from dflow.paths import LinearScheduler, MaskSource, MixturePath
from dflow.sampling import Sampler, time_grid

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "sampler_speed.py"


def _load():
    spec = importlib.util.spec_from_file_location("sampler_speed", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_no_recording_loop_draws_what_the_sampler_draws() -> None:
    bench = _load()
    V, L, B, K = 5, 6, 4, 5
    for disc in ("exact", "euler"):
        path = MixturePath(MaskSource(V), LinearScheduler(), discretization=disc)  # mask source: carry-over too
        model = bench.LookupDenoiser(V + 1, V)
        g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
        traj = Sampler(path, num_steps=K).rollout(model, batch_size=B, seq_len=L, generator=g1)
        bare = bench.rollout_without_recording(path, model, time_grid("uniform", K), B, L, g2)
        assert torch.equal(traj.x1, bare)


def test_benchmark_runs_at_toy_size(capsys) -> None:
    bench = _load()
    results = bench.main(["--quick", "--batch", "2", "--length", "4", "--steps", "2", "--repeats", "1", "--no-write"])
    assert set(results) == {"transformer", "lookup table"}
    for res in results.values():
        assert {"overhead_euler_pct", "overhead_exact_pct"} <= set(res)
    assert "recording costs" in capsys.readouterr().out
