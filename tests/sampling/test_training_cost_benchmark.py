"""benchmarks/training_cost.py: its no-recording comparison loop draws what the sampler draws for a
prompt-conditioned policy (else the overhead it reports would compare different work), its report
has a row per method and per rollout size, and (slow) it runs end to end on the real base."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from dflow.paths import LinearScheduler, MixturePath, UniformSource
from dflow.sampling import Sampler, time_grid

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_no_recording_loop_with_prompts_draws_what_the_sampler_draws() -> None:
    speed = _load("sampler_speed")
    V, L, B, K = 4, 5, 6, 4
    table = torch.randn(3, L, V)  # logits per prompt id and position

    def policy(x, t, cond):  # depends on the prompt, the state and the time
        return table[cond[:, 0]] + 0.5 * torch.nn.functional.one_hot(x, V) * t[:, None, None]

    cond = torch.tensor([[0], [1], [2], [0], [1], [2]])
    path = MixturePath(UniformSource(V), LinearScheduler())
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    traj = Sampler(path, num_steps=K).rollout(policy, cond, batch_size=B, seq_len=L, generator=g1)
    bare = speed.rollout_without_recording(path, policy, time_grid("uniform", K), B, L, g2, cond=cond)
    assert torch.equal(traj.x1, bare)


def test_report_has_a_row_per_method_and_rollout_size() -> None:
    cost_bench = _load("training_cost")
    cost = {
        m: {
            "samples": 64,
            "rollout_steps": 10,
            "forward": 13.0,
            "backward": 6.0,
            "fwd_equiv": 25.0,
            "rollout_s": 2.0,
            "update_s": 3.0,
            "update_over_rollout": 1.5,
        }
        for m in ("elbo_epg", "udm_grpo")
    }
    memory = {"elbo_epg": {s: 10.0 * s for s in cost_bench.ROLLOUT_SIZES}}
    sampler = {"batch": 64, "steps": 20, "seq_len": 144, "record_ms": 101.0, "plain_ms": 100.0, "overhead": 0.01}
    text = cost_bench.render(cost, memory, sampler, "python benchmarks/training_cost.py")
    assert text.startswith(cost_bench.BEGIN) and text.endswith(cost_bench.END)
    assert "| `elbo_epg` | 64 | 10 | 13.0 | 6.0 | 25.0 | 2.00 | 3.00 | 1.50 |" in text
    assert "| `elbo_epg` | 320 | 640 | 1280 |" in text
    assert "recording costs +1.0%" in text


@pytest.mark.slow
def test_quick_run_on_the_real_base(capsys) -> None:
    cost_bench = _load("training_cost")
    cost_bench.main(["--quick"])
    out = capsys.readouterr().out
    assert "| `naive_grpo` | 64 |" in out and "recording costs" in out
