"""Optimisers against hand-worked numbers and against PyTorch's documented algorithms written out step by step;
schedules, clipping, state round trips and argument checks."""
import io
import math

import numpy as np
import pytest

from tinyconv.optim import (SGD, Adam, AdamW, CosineAnnealingLR, LinearWarmup, MultiStepLR, StepLR,
                            clip_grad_norm_)
from tinyconv.tensor import Tensor


def param(values, dtype=np.float64):
    return Tensor(np.array(values, dtype=dtype), requires_grad=True)


def run(opt, p, grads):
    """Feed the gradients one step each; return the parameter after every step."""
    trajectory = []
    for g in grads:
        p.grad = np.array(g, dtype=p.dtype)
        opt.step()
        trajectory.append(p.data.copy())
    return trajectory


# ---- numbers worked by hand ----------------------------------------------------

def test_literature_momentum_example():
    # LITERATURE.md: gradient step -3, previous velocity -9, m = 0.9 -> update -3 + 0.9*(-9) = -11.1
    p = param([0.0])
    opt = SGD([p], lr=0.1, momentum=0.9)
    after_first, after_second = run(opt, p, [[90.0], [30.0]])   # v1 = -lr*90 = -9; then lr*g = 3
    assert after_first[0] == pytest.approx(-9.0, abs=1e-12)
    assert after_second[0] - after_first[0] == pytest.approx(-11.1, abs=1e-12)


def test_classic_and_pytorch_momentum_agree_at_constant_lr():
    rng = np.random.default_rng(0)
    grads = rng.standard_normal((6, 3))
    lr, m, wd = 0.05, 0.9, 0.01
    p = param(rng.standard_normal(3))
    w, v = p.data.copy(), np.zeros(3)
    ours = run(SGD([p], lr=lr, momentum=m, weight_decay=wd), p, grads)
    for g, got in zip(grads, ours):
        v = m * v - lr * (g + wd * w)   # Caffe: v <- m v - lr (g + wd w); w <- w + v
        w = w + v
        np.testing.assert_allclose(got, w, rtol=1e-12, atol=1e-14)


def test_sgd_nesterov_by_hand():
    # lr 1, m 0.5, g = 1 twice: buf 1 -> step 1 + 0.5*1 = 1.5; buf 0.5*1 + 1 = 1.5 -> step 1 + 0.75 = 1.75
    p = param([0.0])
    steps = run(SGD([p], lr=1.0, momentum=0.5, nesterov=True), p, [[1.0], [1.0]])
    assert [s[0] for s in steps] == [-1.5, -3.25]


def test_sgd_plain_and_weight_decay_by_hand():
    p = param([2.0])
    assert run(SGD([p], lr=0.5), p, [[1.0]])[0][0] == 1.5
    p = param([2.0])   # zero gradient: only the decay moves w, by -lr*wd*w
    assert run(SGD([p], lr=0.5, weight_decay=0.1), p, [[0.0]])[0][0] == pytest.approx(2.0 - 0.5 * 0.1 * 2.0)


def test_adam_first_step_is_lr_times_sign():
    # after one step m_hat = g and v_hat = g^2, so the move is lr * g / (|g| + eps)
    p = param([1.0, 1.0])
    run(Adam([p], lr=0.1), p, [[2.0, -0.5]])
    np.testing.assert_allclose(p.data, [1.0 - 0.1 * 2 / (2 + 1e-8), 1.0 + 0.1 * 0.5 / (0.5 + 1e-8)], rtol=1e-15)


def test_adamw_decay_is_decoupled():
    # zero gradient from a fresh state: AdamW only shrinks w by (1 - lr*wd);
    # Adam feeds wd*w through the moments and moves w by about lr
    p = param([3.0])
    run(AdamW([p], lr=0.1, weight_decay=0.5), p, [[0.0]])
    assert p.data[0] == 3.0 * (1 - 0.1 * 0.5)
    q = param([3.0])
    run(Adam([q], lr=0.1, weight_decay=0.5), q, [[0.0]])
    assert q.data[0] == pytest.approx(3.0 - 0.1, abs=1e-8)


# ---- PyTorch's documented algorithms, written out as loops over steps ----------------

def reference_sgd(w, grads, lr, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False):
    w, out, b = w.copy(), [], None
    for t, g in enumerate(grads, start=1):
        if weight_decay:
            g = g + weight_decay * w
        if momentum:
            b = g if t == 1 else momentum * b + (1 - dampening) * g
            g = g + momentum * b if nesterov else b
        w = w - lr * g
        out.append(w)
    return out


def reference_adam(w, grads, lr, betas, eps, weight_decay, amsgrad, decoupled):
    (b1, b2), w, out = betas, w.copy(), []
    m, v, v_max = np.zeros_like(w), np.zeros_like(w), np.zeros_like(w)
    for t, g in enumerate(grads, start=1):
        if decoupled:
            w = w - lr * weight_decay * w
        elif weight_decay:
            g = g + weight_decay * w
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g ** 2
        m_hat = m / (1 - b1 ** t)
        if amsgrad:
            v_max = np.maximum(v_max, v)
            v_hat = v_max / (1 - b2 ** t)
        else:
            v_hat = v / (1 - b2 ** t)
        w = w - lr * m_hat / (np.sqrt(v_hat) + eps)
        out.append(w)
    return out


def random_problem(seed, steps=8, shape=(2, 3)):
    rng = np.random.default_rng(seed)
    # gradients shrink over time so that v decreases and amsgrad's maximum matters
    grads = rng.standard_normal((steps,) + shape) * np.geomspace(4, 0.1, steps)[:, None, None]
    return rng.standard_normal(shape), grads


SGD_CASES = [dict(lr=0.1), dict(lr=0.1, momentum=0.9), dict(lr=0.05, momentum=0.8, dampening=0.3),
             dict(lr=0.1, momentum=0.9, weight_decay=0.01),
             dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3)]


@pytest.mark.parametrize("kwargs", SGD_CASES)
def test_sgd_matches_reference(kwargs):
    w0, grads = random_problem(1)
    p = param(w0)
    for got, want in zip(run(SGD([p], **kwargs), p, grads), reference_sgd(w0, grads, **kwargs)):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14)


ADAM_CASES = [dict(), dict(lr=0.01, betas=(0.8, 0.9)), dict(weight_decay=0.1), dict(amsgrad=True, lr=0.01),
              dict(amsgrad=True, weight_decay=0.05, eps=1e-3)]


@pytest.mark.parametrize("cls", [Adam, AdamW])
@pytest.mark.parametrize("kwargs", ADAM_CASES)
def test_adam_matches_reference(cls, kwargs):
    w0, grads = random_problem(2)
    p = param(w0)
    opt = cls([p], **kwargs)
    want = reference_adam(w0, grads, opt.lr, opt.betas, opt.eps, opt.weight_decay, opt.amsgrad, cls is AdamW)
    for got, expected in zip(run(opt, p, grads), want):
        np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-14)


def test_amsgrad_changes_the_trajectory():
    w0, grads = random_problem(3)
    plain, ams = param(w0), param(w0)
    a = run(Adam([plain], lr=0.01, betas=(0.9, 0.5)), plain, grads)[-1]   # a short memory: v falls quickly
    b = run(Adam([ams], lr=0.01, betas=(0.9, 0.5), amsgrad=True), ams, grads)[-1]
    assert np.abs(a - b).max() > 1e-4


@pytest.mark.parametrize("make", [lambda ps: SGD(ps, lr=0.1, momentum=0.9, weight_decay=0.01),
                                  lambda ps: Adam(ps, amsgrad=True), lambda ps: AdamW(ps)])
def test_float32_stays_in_place_and_matches_float64(make):
    w0, grads = random_problem(4)
    p32, p64 = param(w0, np.float32), param(w0)
    buffer = p32.data
    run(make([p32]), p32, grads.astype(np.float32))
    run(make([p64]), p64, grads)
    assert p32.data is buffer and p32.data.dtype == np.float32
    np.testing.assert_allclose(p32.data, p64.data, rtol=1e-4, atol=1e-5)


def test_params_without_grad_are_skipped_and_zero_grad():
    a, b = param([1.0]), param([1.0])
    opt = Adam([a, b], lr=0.1)
    a.grad = np.array([1.0])
    opt.step()
    assert b.data[0] == 1.0 and opt.state[1] == {"step": 0} and opt.state[0]["step"] == 1
    opt.zero_grad()
    assert a.grad is None and b.grad is None
    opt.step()   # nothing to do
    assert opt.state[0]["step"] == 1


def test_grad_shape_mismatch():
    p = param([1.0, 2.0])
    p.grad = np.ones(3)
    with pytest.raises(ValueError, match=r"params\[0\].grad has shape \(3,\)"):
        SGD([p], lr=0.1).step()


# ---- state_dict ----------------------------------------------------------------

def train(opt, sched, p, grads):
    """One optimiser step, then one schedule step, per gradient; the parameter after each."""
    trajectory = []
    for g in grads:
        trajectory += run(opt, p, [g])
        sched.step()
    return trajectory


@pytest.mark.parametrize("make", [lambda ps: SGD(ps, lr=0.1, momentum=0.9, nesterov=True),
                                  lambda ps: Adam(ps, lr=0.01, amsgrad=True, betas=(0.8, 0.95)),
                                  lambda ps: AdamW(ps, lr=0.01)])
def test_state_dict_npz_round_trip_continues_identically(make):
    w0, grads = random_problem(5, steps=10)
    p = param(w0, np.float32)
    opt = make([p])
    sched = StepLR(opt, step_size=2, gamma=0.5)
    train(opt, sched, p, grads[:5])
    saved = io.BytesIO()
    np.savez(saved, weights=p.data, **opt.state_dict(), **{"sched." + k: v for k, v in sched.state_dict().items()})
    continued = train(opt, sched, p, grads[5:])

    saved.seek(0)
    archive = dict(np.load(saved))
    q = param(archive.pop("weights"), np.float32)
    opt2 = make([q])
    sched2 = StepLR(opt2, step_size=2, gamma=0.5)
    sched2.load_state_dict({k[len("sched."):]: archive.pop(k) for k in list(archive) if k.startswith("sched.")})
    opt2.load_state_dict(archive)
    resumed = train(opt2, sched2, q, grads[5:])
    np.testing.assert_array_equal(continued, resumed)
    assert opt2.lr == opt.lr and opt2.state[0]["step"] == 10


def test_load_state_dict_checks():
    p = param([1.0, 2.0])
    sgd = SGD([p], lr=0.1, momentum=0.9)
    p.grad = np.ones(2)
    sgd.step()
    with pytest.raises(ValueError, match="state_dict is for SGD"):
        Adam([p]).load_state_dict(sgd.state_dict())
    with pytest.raises(ValueError, match="has shape"):
        SGD([param([1.0, 2.0, 3.0])], lr=0.1, momentum=0.9).load_state_dict(sgd.state_dict())
    with pytest.raises(ValueError, match="for 1 parameters"):
        SGD([param([1.0, 2.0]), param([1.0])], lr=0.1).load_state_dict(sgd.state_dict())


def test_state_dict_is_a_copy():
    p = param([1.0])
    opt = SGD([p], lr=0.1, momentum=0.9)
    run(opt, p, [[1.0]])
    saved = opt.state_dict()
    run(opt, p, [[1.0]])
    assert saved["state.0.momentum_buffer"][0] == 1.0


# ---- schedules -----------------------------------------------------------------

def lrs(sched, epochs):
    out = []
    for _ in range(epochs):
        out.append(sched.get_last_lr()[0])
        sched.step()
    return out


def sgd(lr=0.1):
    return SGD([param([0.0])], lr=lr)


def test_step_lr():
    assert lrs(StepLR(sgd(1.0), step_size=2, gamma=0.5), 6) == [1.0, 1.0, 0.5, 0.5, 0.25, 0.25]


def test_step_lr_googlenet_solver():
    # Caffe "step": lr = base_lr * gamma^floor(iter / stepsize), stepped per iteration
    opt = SGD([param([0.0])], lr=0.01, momentum=0.9, weight_decay=0.0002)
    sched = StepLR(opt, step_size=320_000, gamma=0.96)
    assert sched.lr_at(319_999) == 0.01
    assert sched.lr_at(320_000) == pytest.approx(0.0096, rel=1e-15)
    assert sched.lr_at(640_000) == pytest.approx(0.009216, rel=1e-15)
    assert sched.lr_at(1_000_000) == pytest.approx(0.01 * 0.96 ** 3, rel=1e-15)


def test_multistep_lr():
    got = lrs(MultiStepLR(sgd(1.0), milestones=[2, 5], gamma=0.1), 7)
    np.testing.assert_allclose(got, [1, 1, 0.1, 0.1, 0.1, 0.01, 0.01], rtol=1e-15)


def test_cosine_annealing():
    sched = CosineAnnealingLR(sgd(1.0), T_max=4, eta_min=0.2)
    got = lrs(sched, 5)
    np.testing.assert_allclose(got, [1.0, 0.2 + 0.8 * (1 + math.sqrt(0.5)) / 2, 0.6,
                                     0.2 + 0.8 * (1 - math.sqrt(0.5)) / 2, 0.2], rtol=1e-14)


def test_linear_warmup_standalone_and_wrapping():
    assert lrs(LinearWarmup(sgd(1.0), warmup=4, start_factor=0.0), 6) == [0.0, 0.25, 0.5, 0.75, 1.0, 1.0]
    opt = sgd(0.9)
    warm = LinearWarmup(opt, warmup=3, after=StepLR(opt, step_size=2, gamma=0.5))
    np.testing.assert_allclose(lrs(warm, 8), [0.3, 0.5, 0.7, 0.9, 0.9, 0.45, 0.45, 0.225], rtol=1e-14)
    assert opt.lr == warm.lr_at(8)


def test_scheduler_state_round_trip():
    opt = sgd(1.0)
    sched = CosineAnnealingLR(opt, T_max=10)
    lrs(sched, 3)
    opt2 = sgd(1.0)
    sched2 = CosineAnnealingLR(opt2, T_max=10)
    sched2.load_state_dict({k: np.asarray(v) for k, v in sched.state_dict().items()})
    assert opt2.lr == opt.lr and lrs(sched2, 4) == lrs(sched, 4)


# ---- gradient clipping ------------------------------------------------------------

def test_clip_grad_norm():
    a, b = param([0.0, 0.0], np.float32), param([0.0])
    a.grad, b.grad = np.array([3.0, 4.0], np.float32), np.array([12.0])
    total = clip_grad_norm_([a, b], max_norm=6.5)
    assert total == 13.0
    scale = 6.5 / (13.0 + 1e-6)
    np.testing.assert_allclose(a.grad, [3 * scale, 4 * scale], rtol=1e-7)
    np.testing.assert_allclose(b.grad, [12 * scale], rtol=1e-15)
    assert a.grad.dtype == np.float32


def test_clip_grad_norm_below_limit_and_inf_norm():
    a, b = param([0.0, 0.0]), param([0.0])
    a.grad, b.grad = np.array([3.0, -4.0]), None
    assert clip_grad_norm_([a, b], max_norm=100.0) == 5.0
    np.testing.assert_array_equal(a.grad, [3.0, -4.0])
    assert clip_grad_norm_(a, max_norm=2.0, norm_type=math.inf) == 4.0
    np.testing.assert_allclose(a.grad, [1.5, -2.0], rtol=1e-6)


# ---- bad hyper-parameters -----------------------------------------------------------

@pytest.mark.parametrize("make, name", [
    (lambda ps: SGD(ps, lr=-0.1), "lr"),
    (lambda ps: SGD(ps, lr=0.1, momentum=1.0), "momentum"),
    (lambda ps: SGD(ps, lr=0.1, momentum=-0.5), "momentum"),
    (lambda ps: SGD(ps, lr=0.1, weight_decay=-1e-4), "weight_decay"),
    (lambda ps: SGD(ps, lr=0.1, nesterov=True), "nesterov"),
    (lambda ps: SGD(ps, lr=0.1, momentum=0.9, dampening=0.1, nesterov=True), "nesterov"),
    (lambda ps: SGD(ps, lr=float("nan")), "lr"),
    (lambda ps: Adam(ps, betas=(1.0, 0.999)), r"betas\[0\]"),
    (lambda ps: Adam(ps, betas=(0.9, -0.1)), r"betas\[1\]"),
    (lambda ps: Adam(ps, eps=-1e-8), "eps"),
    (lambda ps: AdamW(ps, lr=-1.0), "lr"),
    (lambda ps: SGD([], lr=0.1), "params"),
    (lambda ps: SGD(ps + ps, lr=0.1), "same tensor"),
    (lambda ps: StepLR(SGD(ps, lr=0.1), step_size=0), "step_size"),
    (lambda ps: MultiStepLR(SGD(ps, lr=0.1), milestones=[5, 2]), "milestones"),
    (lambda ps: CosineAnnealingLR(SGD(ps, lr=0.1), T_max=0), "T_max"),
    (lambda ps: LinearWarmup(SGD(ps, lr=0.1), warmup=2, start_factor=1.5), "start_factor"),
    (lambda ps: LinearWarmup(SGD(ps, lr=0.1), warmup=2, after=StepLR(SGD(ps, lr=0.1), 2)), "same optimizer"),
    (lambda ps: clip_grad_norm_(ps, max_norm=-1.0), "max_norm"),
])
def test_bad_hyper_parameters(make, name):
    with pytest.raises(ValueError, match=name):
        make([param([1.0])])


def test_non_number_lr_and_non_tensor_params():
    with pytest.raises(TypeError, match="lr must be a number"):
        SGD([param([1.0])], lr="0.1")
    with pytest.raises(TypeError, match=r"params\[0\]"):
        SGD([np.ones(2)], lr=0.1)
