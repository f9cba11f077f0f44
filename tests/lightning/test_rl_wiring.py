"""RLModule wiring seen from outside the update: which step a reward belongs to, what each mini-batch
of an RL step compares against, which generator every draw uses, and that an RL evaluation and
``dflow sample`` are one function.

``scripts/mutation_check.py`` plants a bug for each and checks that this file fails.
"""

from __future__ import annotations

import json

import lightning as L
import pytest
import torch
from torch.overrides import TorchFunctionMode

from dflow import cli
from dflow.lightning import EvalConfig, RolloutConfig
from dflow.lightning.builders import PretrainedDenoiser
from dflow.lightning.rl_module import RLModule
from dflow.paths import MaskSource, MixturePath
from dflow.paths.sources import UniformSource
from dflow.rl import (
    ClippedSurrogate,
    ForwardReconstruction,
    GroupAdvantage,
    KLPenalty,
    StepWindow,
    StepwiseGainAdvantage,
    TrajectoryLikelihood,
)
from dflow.rng import DeviceRNG
from dflow.sampling import SamplerConfig, Trajectory
from dflow.tasks import ShapesTask
from tests.conftest import rl_settings

pytestmark = pytest.mark.usefixtures("single_thread")

V, K, G, P = 3, 4, 4, 2  # copy task values, sampler steps, group size, prompts per RL step
B = G * P


def _module(builder, parts, source=None, **overrides) -> RLModule:
    kwargs = dict(
        rollout=SamplerConfig(num_steps=K),
        evaluation=SamplerConfig(num_steps=K),
        group_size=G,
        num_inner_epochs=2,
        minibatch_size=4,
        lr=1e-2,
        eval_every_n_steps=0,
    )
    kwargs.update(overrides)
    path = MixturePath(source if source is not None else UniformSource(V))
    return RLModule(builder, path, **parts, **rl_settings(**kwargs))


def _trainer(tmp_path, **kwargs) -> L.Trainer:
    defaults = dict(
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    return L.Trainer(**{**defaults, **kwargs})


UDM = lambda: dict(  # noqa: E731
    likelihood=ForwardReconstruction(num_timesteps=2, grid_steps=4, max_start=1),
    objective=ClippedSurrogate(0.2),
    advantage=GroupAdvantage(),
    kl=KLPenalty(0.05, "k3"),
)


def test_each_rl_step_starts_on_policy_against_the_policy_and_later_minibatches_are_off(
    copy_task, tiny_builder, prompt_batches, tmp_path
):
    """Three RL steps of 2 inner epochs x 2 mini-batches with a KL to the initial policy. In every RL
    step the first mini-batch has ratio exactly 1 (old values = the current policy's, not the
    reference's: from the second step on the two differ, as the logged KL shows) and a later one
    does not (the old values stay frozen while the weights move)."""
    module = _module(tiny_builder, UDM())
    calls: list[dict[str, float]] = []
    loss = module.update.loss

    def spy(*args, **kwargs):
        out = loss(*args, **kwargs)
        calls.append(out.stats)
        return out

    module.update.loss = spy
    _trainer(tmp_path).fit(module, datamodule=prompt_batches(copy_task, num_batches=3, prompts_per_step=P))
    assert len(calls) == 3 * 4
    for step in range(3):
        first, *later = calls[4 * step : 4 * step + 4]
        assert first["ratio_min"] == 1.0 == first["ratio_max"], (step, first)
        assert any(c["ratio_min"] < 1 - 1e-6 or c["ratio_max"] > 1 + 1e-6 for c in later), (step, later)
        if step:
            assert first["kl"] > 0  # the reference is not the policy any more


def _decode(values: list[int]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.uint8)


def test_step_rewards_are_the_rewards_of_each_steps_decode_then_the_final_one(copy_task, tiny_builder):
    """Column k of the step rewards is the reward of the decode recorded at step k (from x_{t_k}),
    column K the final reward; StepwiseGainAdvantage then credits step k with r_{k+1} - r_k. Copy task:
    the reward is the fraction of the prompt copied, so each decode's reward is known by hand."""
    module = _module(
        tiny_builder,
        dict(likelihood=TrajectoryLikelihood(), objective=ClippedSurrogate(0.2), advantage=StepwiseGainAdvantage()),
    )
    module.attach_task(copy_task)
    prompt = copy_task.prompts("rl")[5]
    target = list(prompt.spec)  # what a perfect sample copies
    wrong = [(v + 1) % V for v in target]
    copies = [0, 2, 1, 4]  # decode k copies the first copies[k] values: rewards 0, 0.5, 0.25, 1
    argmax = torch.stack([_decode(target[:c] + wrong[c:]) for c in copies])[:, None]  # [K, 1, L]
    x1 = torch.tensor([target[:3] + wrong[3:]])  # final sample: reward 0.75
    traj = Trajectory(
        states=torch.zeros(K + 1, 1, 4, dtype=torch.uint8),
        times=torch.linspace(0, 1, K + 1),
        log_probs=torch.zeros(1, K),
        x1=x1,
        posterior_argmax=argmax,
    )
    final = copy_task.reward(x1, [prompt])
    got = module._step_rewards(traj, [prompt], final)
    assert torch.equal(got, torch.tensor([[0.0, 0.5, 0.25, 1.0, 0.75]]))
    gains = got[:, 1:] - got[:, :-1]  # what the advantage normalises: step k gets r_{k+1} - r_k
    assert torch.equal(gains, torch.tensor([[0.5, -0.25, 0.75, -0.25]]))


def test_mask_source_decodes_keep_the_tokens_already_revealed(copy_task, tiny_builder):
    """The decode at step k (what stepwise credit scores) keeps every token already revealed in
    x_{t_k}: with a mask source those are final, whatever the posterior's argmax says there."""
    path = MixturePath(MaskSource(V))
    policy = tiny_builder.build(copy_task, path).eval()
    sampler = SamplerConfig(num_steps=6).build(path)
    prompts = copy_task.prompts("rl")[:16]
    traj = sampler.rollout(
        policy, copy_task.encode_prompts(prompts), batch_size=16, seq_len=4, generator=torch.Generator().manual_seed(0)
    )
    revealed = 0
    for k in range(traj.num_steps):
        state, decode = traj.states[k].long(), traj.posterior_argmax[k].long()
        known = state != V
        assert torch.equal(decode[known], state[known]), k
        revealed += int(known.sum())
    assert revealed > 0


class GeneratorAudit(TorchFunctionMode):
    """Records every random draw that takes a generator, with the device it draws on: the ``device``
    argument, else the tensor it fills or samples from. A factory draw without a device argument would
    draw on the default device (the CPU) and fail with a CUDA generator: it is recorded as such."""

    def __init__(self) -> None:
        super().__init__()
        self.draws: list[tuple[str, torch.Generator, torch.device | None]] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        gen = kwargs.get("generator")
        if isinstance(gen, torch.Generator):
            device = kwargs.get("device")
            if device is None and args and isinstance(args[0], torch.Tensor):
                device = args[0].device
            self.draws.append(
                (getattr(func, "__name__", str(func)), gen, None if device is None else torch.device(device))
            )
        return func(*args, **kwargs)


def test_every_rl_draw_uses_the_module_generator_on_the_module_device(
    copy_task, tiny_builder, prompt_batches, tmp_path
):
    """One RL step draws rollout noise, a step window, re-noised states and mini-batch orders. Each
    draw must name its device and use the module's generator, which lives on the module's device: a
    CPU generator handed to a CUDA draw is an error in PyTorch (the RL step crashed on GPUs so)."""
    parts = dict(
        likelihood=TrajectoryLikelihood(StepWindow(size=2, start=0, max_start=1)),
        objective=ClippedSurrogate(0.2),
        advantage=GroupAdvantage(),
    )
    for module in (_module(tiny_builder, parts), _module(tiny_builder, UDM())):
        audit, data = GeneratorAudit(), prompt_batches(copy_task, num_batches=1, prompts_per_step=P)
        with audit:
            _trainer(tmp_path).fit(module, datamodule=data)
        assert len(audit.draws) > 5
        implicit = [name for name, _, device in audit.draws if device is None]
        assert not implicit, f"draws without a device (the CPU by default): {implicit}"
        assert all(device == gen.device for _, gen, device in audit.draws)
        assert {id(gen) for _, gen, _ in audit.draws} == {id(module.generator)}
        assert module.generator.device == module.device


def test_device_rng_builds_its_generator_on_the_device_asked_for(monkeypatch):
    """The generator is made on the device it will draw on (checked with a stand-in for
    torch.Generator, as this machine has no GPU), keeps its stream on that device, and a checkpoint
    state restores it there."""
    made = []
    real = torch.Generator

    def fake_generator(device="cpu"):
        made.append(torch.device(device))
        return real()  # a CPU generator standing in for the device's

    monkeypatch.setattr(torch, "Generator", fake_generator)
    rng = DeviceRNG(seed=3)
    gen = rng.on("cuda:1")
    assert made == [torch.device("cuda:1")]
    monkeypatch.setattr(torch, "Generator", real)
    first = torch.rand(4, generator=gen)
    rng2 = DeviceRNG(seed=3)
    assert torch.equal(torch.rand(4, generator=rng2.on("cpu")), first)  # seeded the same way


def test_module_generator_is_made_on_the_module_device(tiny_builder, monkeypatch):
    """RLModule asks for its generator on its own device (here a pretend CUDA device: the module is
    never run, only asked), so the rollout's and the plans' draws happen where the weights are."""
    module = _module(tiny_builder, UDM())
    made = []
    real = torch.Generator

    def fake_generator(device="cpu"):
        made.append(torch.device(device))
        return real()

    monkeypatch.setattr(torch, "Generator", fake_generator)
    monkeypatch.setattr(module, "_device", torch.device("cuda", 0))
    _ = module.generator  # the property builds the generator
    assert made == [torch.device("cuda", 0)]


def restored_before_draw(state) -> bool:
    rng = DeviceRNG(seed=99)
    rng.load_state_dict(state)
    saved = rng.state_dict()
    return saved is not None and torch.equal(saved["state"], state["state"])


def test_device_rng_state_round_trips_and_refuses_to_carry_a_stream_across_devices():
    rng = DeviceRNG(seed=5)
    gen = rng.on("cpu")
    torch.rand(3, generator=gen)
    state = rng.state_dict()
    expected = torch.rand(3, generator=gen)
    restored = DeviceRNG(seed=99)
    restored.load_state_dict(state)
    assert torch.equal(torch.rand(3, generator=restored.on("cpu")), expected)
    legacy = DeviceRNG(seed=99)  # checkpoints before DeviceRNG stored a CPU generator's state tensor
    legacy.load_state_dict(state["state"])
    assert torch.equal(torch.rand(3, generator=legacy.on("cpu")), expected)
    assert restored_before_draw(state)  # a state restored but not yet drawn from is saved as it was
    moved = DeviceRNG(seed=5)
    moved.load_state_dict({"device": "cuda", "state": torch.zeros(16, dtype=torch.uint8)})
    with pytest.warns(UserWarning, match="moved from cuda to cpu"):
        moved.on("cpu")


def test_rl_evaluation_and_dflow_sample_give_the_same_numbers(tmp_path, prompt_batches):
    """The step-0 evaluation of an RL run and ``dflow sample`` with the same sampler, samples per
    category and batch size are one function with one default seed: the same accuracies and reward
    to the last digit. The embedded shapes base is used so that the numbers depend on the noise
    (another seed gives another reward: the comparison has power)."""
    folder = "dflow/assets/shapes_uniform"
    task = ShapesTask()
    module = RLModule(
        PretrainedDenoiser(folder),
        MixturePath(UniformSource(7)),
        **UDM(),
        rollout=RolloutConfig(num_steps=2, group_size=2),
        evaluation=EvalConfig(num_steps=4, every_n_steps=100, samples_per_category=3, batch_size=7),
    )
    module.attach_task(task)
    _trainer(tmp_path, max_steps=1).fit(module, datamodule=prompt_batches(task, num_batches=1, prompts_per_step=1))
    rl = module.eval_history[0]

    def sample(*extra):
        report = tmp_path / f"sample{len(extra)}.json"
        cli.main(
            [
                "sample",
                "--checkpoint",
                folder,
                "--out",
                str(tmp_path / "g.png"),
                "--steps",
                "4",
                "--guidance",
                "1",
                "--samples-per-category",
                "3",
                "--batch-size",
                "7",
                "--json",
                str(report),
                *extra,
            ]
        )
        return json.loads(report.read_text())

    sampled = sample()
    assert sampled["n"] == len(module.eval_prompts) == 6 * 3
    for key in [k for k in sampled if k.startswith("acc/")] + ["reward"]:
        assert sampled[key] == rl["eval/" + key.replace("/", "_")], key
    assert sample("--seed", "5")["reward"] != rl["eval/reward"]
