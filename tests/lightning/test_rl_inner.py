"""The inner loop of one RL step (dflow.lightning.rl_inner), on a one-layer model with plain SGD so
every weight change can be computed by hand: the gradient is clipped to ``max_grad_norm`` before the
step, the returned norms are the norms before clipping, every (epoch, mini-batch) takes one step,
Lightning's wrapper takes only the last one, and a non-finite loss or gradient undoes the earlier
steps; and RLModule hands the inner loop its own parts."""

from __future__ import annotations

import math

import pytest
import torch

from dflow.lightning.rl_inner import NonFiniteStep, clip_gradients, optimise
from dflow.rl.update import Compute, LossOutput


class _Update:
    """A PolicyUpdate stand-in: loss = sum over the mini-batch's rows of w . x_i (gradient: their sum)."""

    def __init__(
        self, x: torch.Tensor, num_inner_epochs: int, minibatch: int, bad_call: int | None = None, bad: str = "loss"
    ):
        self.x, self.num_inner_epochs, self.mb, self.bad_call, self.calls = x, num_inner_epochs, minibatch, bad_call, 0
        self.bad = bad  # "loss": a NaN loss; "grad": a finite loss whose gradient is infinite

    def minibatches(self, batch_size, group_size, generator):
        return list(torch.arange(batch_size).split(self.mb))

    def loss(self, policy, batch, index, sampler, compute):
        self.calls += 1
        value = (policy(self.x[index])).sum()
        if self.bad_call == self.calls and self.bad == "loss":
            value = value * math.nan
        elif self.bad_call == self.calls:
            value.register_hook(lambda g: g * math.inf)
        return LossOutput(value, {"calls": float(self.calls)})


class _Opt:
    """What optimise needs of a LightningOptimizer: ``optimizer``, ``step`` (the wrapper) and ``zero_grad``."""

    def __init__(self, params, lr: float, update: _Update):
        self.optimizer = torch.optim.SGD(params, lr=lr)
        self.wrapper_steps: list[int] = []  # the loss call each wrapper step followed
        self.update = update

    def step(self):
        self.wrapper_steps.append(self.update.calls)
        self.optimizer.step()

    def zero_grad(self, set_to_none: bool = True):
        self.optimizer.zero_grad(set_to_none=set_to_none)


def _run(update, max_grad_norm, lr=1.0):
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1, bias=False)
    w0 = model.weight.detach().clone()
    opt = _Opt(model.parameters(), lr, update)
    kwargs = dict(batch_size=update.x.shape[0], group_size=1, generator=None, max_grad_norm=max_grad_norm)
    run = lambda: optimise(  # noqa: E731
        update,
        model,
        model,
        opt,
        None,
        None,
        Compute(),
        device=torch.device("cpu"),
        backward=torch.Tensor.backward,
        **kwargs,
    )
    return model, w0, opt, run


def test_clip_gradients_returns_the_norm_before_clipping_and_scales_to_the_limit():
    model = torch.nn.Linear(2, 1, bias=False)
    model.weight.grad = torch.tensor([[3.0, 4.0]])
    norm = clip_gradients(model, 1.0)
    assert norm.item() == pytest.approx(5.0)
    assert model.weight.grad.norm().item() == pytest.approx(1.0, rel=1e-5)
    assert torch.allclose(model.weight.grad, torch.tensor([[0.6, 0.8]]), atol=1e-6)


def test_each_step_is_clipped_to_max_grad_norm_and_reports_the_unclipped_norm():
    x = torch.tensor([[3.0, 0.0, 0.0], [0.0, 4.0, 0.0]])  # gradient of sum(w . x_i) = (3, 4, 0), norm 5
    update = _Update(x, num_inner_epochs=1, minibatch=2)
    model, w0, opt, run = _run(update, max_grad_norm=0.5, lr=1.0)
    result = run()
    assert result.grad_norms == pytest.approx([5.0])
    step = (model.weight.detach() - w0).flatten()
    assert torch.allclose(step, -torch.tensor([0.3, 0.4, 0.0]), atol=1e-6)  # lr x (3, 4, 0) x 0.5 / 5


def test_no_limit_means_the_raw_gradient():
    x = torch.tensor([[3.0, 0.0, 0.0], [0.0, 4.0, 0.0]])
    model, w0, _, run = _run(_Update(x, 1, 2), max_grad_norm=None, lr=0.1)
    run()
    assert torch.allclose((model.weight.detach() - w0).flatten(), -torch.tensor([0.3, 0.4, 0.0]), atol=1e-6)


def test_every_epoch_and_minibatch_steps_and_only_the_last_goes_through_the_wrapper():
    x = torch.eye(3)[:2]  # two mini-batches of one row: gradients e_0 and e_1
    update = _Update(x, num_inner_epochs=3, minibatch=1)
    model, w0, opt, run = _run(update, max_grad_norm=None, lr=0.1)
    result = run()
    assert len(result.grad_norms) == 6 and result.stats["calls"] == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    assert opt.wrapper_steps == [6]  # once, after the last loss: trainer.global_step counts RL steps
    assert torch.allclose((model.weight.detach() - w0).flatten(), -torch.tensor([0.3, 0.3, 0.0]), atol=1e-6)


@pytest.mark.parametrize("bad", ["loss", "grad"])
@pytest.mark.parametrize(
    ("epochs", "bad_call"),
    [(3, 1), (3, 2), (3, 4), (3, 6), (1, 2), (1, 1)],  # first, second, middle, last of 6; last of 2; a single step
)
def test_a_non_finite_loss_or_gradient_undoes_every_step_of_the_rl_step(epochs, bad_call, bad):
    x = torch.eye(3)[: 2 if epochs == 3 or bad_call == 2 else 1]
    update = _Update(x, num_inner_epochs=epochs, minibatch=1, bad_call=bad_call, bad=bad)
    model, w0, opt, run = _run(update, max_grad_norm=1.0, lr=0.1)
    what = "loss is nan" if bad == "loss" else "gradient norm is (inf|nan)"
    with pytest.raises(NonFiniteStep, match=rf"{what} .*lower model\.init_args\.optim\.lr"):
        run()
    assert update.calls == bad_call  # it stops at the bad mini-batch
    assert torch.equal(model.weight.detach(), w0)
    assert all(p.grad is None for p in model.parameters())
    assert opt.wrapper_steps == []  # nothing reached Lightning: global_step does not count the step


@pytest.mark.parametrize("limit", [1e-3, None])
def test_rl_module_clips_at_its_optim_max_grad_norm(
    limit, copy_task, tiny_builder, prompt_batches, tmp_path, monkeypatch
):
    """The module hands optim.max_grad_norm to the inner loop (AdamW hides a clip from the weights, so
    only the DDP test saw this wiring before): each optimiser step's gradient ends at the limit, and
    with no limit it is left as it is."""
    from test_rl_module import METHODS, SOURCES, P, _module, _trainer  # tests/lightning is on sys.path (rootdir)

    import dflow.lightning.rl_inner as inner

    after_clip: list[float] = []
    real = inner.clip_gradients

    def spy(denoiser, max_norm):
        norm = real(denoiser, max_norm)
        grads = [p.grad.flatten() for p in denoiser.parameters() if p.grad is not None]
        after_clip.append(torch.cat(grads).norm().item())
        return norm

    monkeypatch.setattr(inner, "clip_gradients", spy)
    module = _module(tiny_builder, SOURCES["uniform"](), METHODS["elbo_epg"](), max_grad_norm=limit)
    module.attach_task(copy_task)
    _trainer(tmp_path).fit(module, datamodule=prompt_batches(copy_task, num_batches=1, prompts_per_step=P))
    assert len(after_clip) == 4  # 2 inner epochs x 2 mini-batches
    if limit is None:
        assert min(after_clip) > 1e-2  # unclipped: the tiny model's gradients are far above 1e-3
    else:
        assert max(after_clip) == pytest.approx(limit, rel=1e-3)


def test_rl_module_hands_the_inner_loop_its_own_parts(copy_task, tiny_builder, prompt_batches, tmp_path, monkeypatch):
    """The call site's wiring: the rollout sampler (not the evaluation one), the module's group size
    (mini-batches of whole prompt groups), its generator, Lightning's manual_backward, the policy it
    rolls out with and the denoiser whose weights it owns."""
    from test_rl_module import METHODS, SOURCES, P, _module, _trainer

    import dflow.lightning.rl_module as rl_module

    seen: list[tuple] = []
    real = rl_module.optimise

    def spy(update, policy, denoiser, opt, batch, sampler, compute, **kwargs):
        seen.append((update, policy, denoiser, sampler, compute, kwargs))
        return real(update, policy, denoiser, opt, batch, sampler, compute, **kwargs)

    monkeypatch.setattr(rl_module, "optimise", spy)
    module = _module(tiny_builder, SOURCES["uniform"](), METHODS["elbo_epg"](), max_grad_norm=0.5)
    module.attach_task(copy_task)
    _trainer(tmp_path).fit(module, datamodule=prompt_batches(copy_task, num_batches=1, prompts_per_step=P))
    ((update, policy, denoiser, sampler, compute, kwargs),) = seen
    assert update is module.update and compute is module.compute
    assert policy is module.policy and denoiser is module.denoiser
    assert sampler is module.rollout_sampler and sampler is not module.eval_sampler
    assert kwargs["group_size"] == module.group_size > 1
    assert kwargs["batch_size"] == P * module.group_size
    assert kwargs["generator"] is module.generator
    assert kwargs["max_grad_norm"] == 0.5
    assert kwargs["backward"] == module.manual_backward
