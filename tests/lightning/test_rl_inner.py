"""The inner loop of one RL step (dflow.lightning.rl_inner), on a one-layer model with plain SGD so
every weight change can be computed by hand: the gradient is clipped to ``max_grad_norm`` before the
step, the returned norms are the norms before clipping, every (epoch, mini-batch) takes one step,
Lightning's wrapper takes only the last one, and a non-finite loss undoes the earlier steps."""

from __future__ import annotations

import math

import pytest
import torch

from dflow.lightning.rl_inner import NonFiniteStep, clip_gradients, optimise
from dflow.rl.update import Compute, LossOutput


class _Update:
    """A PolicyUpdate stand-in: loss = sum over the mini-batch's rows of scale * (w . x_i)."""

    def __init__(self, x: torch.Tensor, num_inner_epochs: int, minibatch: int, bad_call: int | None = None):
        self.x, self.num_inner_epochs, self.mb, self.bad_call, self.calls = x, num_inner_epochs, minibatch, bad_call, 0

    def minibatches(self, batch_size, group_size, generator):
        return list(torch.arange(batch_size).split(self.mb))

    def loss(self, policy, batch, index, sampler, compute):
        self.calls += 1
        value = (policy(self.x[index])).sum()
        if self.bad_call == self.calls:
            value = value * math.nan
        return LossOutput(value, {"calls": float(self.calls)})


class _Opt:
    """What optimise needs of a LightningOptimizer: ``optimizer``, ``step`` (the wrapper) and ``zero_grad``."""

    def __init__(self, params, lr: float):
        self.optimizer = torch.optim.SGD(params, lr=lr)
        self.wrapper_steps = 0

    def step(self):
        self.wrapper_steps += 1
        self.optimizer.step()

    def zero_grad(self, set_to_none: bool = True):
        self.optimizer.zero_grad(set_to_none=set_to_none)


def _run(update, max_grad_norm, lr=1.0):
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1, bias=False)
    w0 = model.weight.detach().clone()
    opt = _Opt(model.parameters(), lr)
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
    assert opt.wrapper_steps == 1  # trainer.global_step counts RL steps, not optimiser steps
    assert torch.allclose((model.weight.detach() - w0).flatten(), -torch.tensor([0.3, 0.3, 0.0]), atol=1e-6)


@pytest.mark.parametrize("bad_call", [1, 4])
def test_a_non_finite_loss_undoes_every_step_of_the_rl_step(bad_call):
    update = _Update(torch.eye(3)[:2], num_inner_epochs=3, minibatch=1, bad_call=bad_call)
    model, w0, opt, run = _run(update, max_grad_norm=None, lr=0.1)
    with pytest.raises(NonFiniteStep, match=r"loss is nan .*lower model\.init_args\.optim\.lr"):
        run()
    assert torch.equal(model.weight.detach(), w0)
    assert all(p.grad is None for p in model.parameters())


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
