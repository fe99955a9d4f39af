"""Probes and traces: exact statistics, no stored gradients, hooks removed, grad mode restored."""
from __future__ import annotations

import pytest
import torch

import gradcheck
from gradcheck import instrument, probe, trace
from gradcheck.errors import DenoiserError

from gradcheck.sampling import build_denoiser

from .conftest import sampler, z0_like


def test_probe_is_a_noop_outside_a_trace():
    x = torch.randn(3, requires_grad=True)
    y = x * 2
    assert probe(y, "y") is y
    assert y._backward_hooks is None or len(y._backward_hooks) == 0


def test_statistics_match_the_gradient_exactly():
    x = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 5, dtype=torch.float64)
    w[0, 0] = 0.0
    with trace() as tr:
        y = probe(x * 3.0, "y", step=2, kind="state", sigma=torch.tensor([1.5, 2.0]))
        probe(x, "x", kind="z0")
        (y * w).sum().backward()
    st = {s.name: s for s in tr.stats}
    g = w  # dL/dy
    assert st["y"].reached and st["y"].step == 2 and st["y"].sigma == 1.5
    assert st["y"].norm == pytest.approx(g.norm().item())
    assert st["y"].mean_abs == pytest.approx(g.abs().mean().item())
    assert st["y"].max_abs == pytest.approx(g.abs().max().item())
    assert st["y"].nonfinite == 0
    assert st["x"].norm == pytest.approx((3 * g).norm().item())
    for s in tr.stats:  # plain data only: no tensors survive the trace
        for v in vars(s).values():
            assert not isinstance(v, torch.Tensor)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_held_and_immediate_statistics_agree(monkeypatch, dtype):
    """Small gradients are held until the trace closes and summarised together; large ones (or
    past the byte budget, or of another dtype) in the hook. Both give the same numbers, also
    for a tensor whose gradient is accumulated from two uses, an overflowing and a NaN one."""
    import gradcheck.gradstats as P

    def run(defer):
        monkeypatch.setattr(P, "DEFER_NUMEL", defer)
        x = torch.linspace(-2, 3, 60, dtype=torch.float64).reshape(6, 10).to(dtype)
        x.requires_grad_(True)
        big = torch.full((3,), 1e30 if dtype != torch.bfloat16 else 1e30, dtype=dtype)
        with trace() as tr:
            y = probe(x * 2.0, "y", kind="state")
            twice = probe(x.exp(), "twice", kind="state")
            over = probe(x[0, :3] * 1.0, "over", kind="state")
            bad = probe(x[1, :3] * 1.0, "bad", kind="state")
            loss = (y * y).sum() + (twice * 3).sum() + twice.sin().sum() \
                + (over * big).sum() + (bad * torch.tensor([1.0, float("nan"), 1.0],
                                                            dtype=dtype)).sum()
            loss.backward()
        return {s.name: (s.norm, s.mean_abs, s.max_abs, s.nonfinite) for s in tr.stats}

    held, now = run(1 << 15), run(0)
    assert set(held) == set(now) == {"y", "twice", "over", "bad"}
    for name in held:
        for a, b in zip(held[name], now[name]):
            assert a == pytest.approx(b, rel=1e-6, nan_ok=True), (name, held[name], now[name])
    assert held["bad"][3] == 1 and held["y"][3] == 0
    if dtype == torch.float32:  # 1e30 squared overflows the L2 norm: counted, all finite
        assert held["over"][0] == float("inf") and held["over"][3] == 0


def test_held_gradients_are_released_and_the_budget_holds(monkeypatch):
    import gc
    import weakref

    import gradcheck.gradstats as G

    monkeypatch.setattr(G, "DEFER_BYTES", 3 * 8 * 8)  # room for three 8-element float64 grads
    x = torch.randn(8, dtype=torch.float64, requires_grad=True)
    refs = []
    with trace() as tr:
        ys = [probe(x * float(i + 1), f"y{i}", kind="state") for i in range(5)]
        ys[0].register_hook(lambda g: refs.append(weakref.ref(g)))
        sum(y.sum() for y in ys).backward()
        assert len(tr._held.held) == 3  # the other two summarised in their hooks
    assert [s.norm for s in tr.stats] == pytest.approx([8 ** 0.5] * 5)
    gc.collect()
    assert tr._held.held == {} and all(r() is None for r in refs)


def test_none_vs_zero_vs_nonfinite_vs_not_in_graph():
    x = torch.randn(3, requires_grad=True)
    with trace() as tr:
        a = probe(x * 1.0, "a")  # used below
        b = probe(x * 2.0, "b")  # in a graph, never used: no gradient arrives
        c = probe(torch.clamp(x, 10, 20), "c")  # saturated clamp: exactly zero upstream of it
        d = probe(torch.ones(3), "d")  # not in any graph
        e = probe(x * 1.0, "e")
        loss = a.sum() + c.sum() + (e * torch.tensor([1.0, float("nan"), 1.0])).sum() + d.sum()
        loss.backward()
    st = {s.name: s.status for s in tr.stats}
    assert st == {"a": "ok", "b": "unreached", "c": "ok", "d": "not_in_graph", "e": "nonfinite"}
    assert x.grad is not None
    del b


def test_hooks_removed_and_grad_mode_restored_when_the_code_raises():
    x = torch.randn(3, requires_grad=True)
    ys = []
    with pytest.raises(RuntimeError, match="boom"):
        with trace() as tr:
            y = probe(x * 2, "y")
            ys.append(y)
            torch.set_grad_enabled(False)
            raise RuntimeError("boom")
    assert torch.is_grad_enabled()
    assert tr.hooks_registered == 1 and tr.hooks_left == 0
    assert len(ys[0]._backward_hooks or {}) == 0
    assert gradcheck.probes.current_trace() is None


def test_diagnose_removes_hooks_after_an_exception_inside_the_sampler(conv32):
    kept = []

    def boom(z):
        x = sampler(conv32)(z)
        kept.append(x)
        raise ValueError("sampler exploded")

    rep = gradcheck.diagnose(boom, z0_like(dtype=torch.float32), numeric=False, optim_steps=0)
    assert rep.raised.type == "ValueError" and rep.raised.message == "sampler exploded"
    assert not rep.passed and rep.check("trace_hygiene").passed
    assert torch.is_grad_enabled()
    assert gradcheck.probes.current_trace() is None
    out = kept[-1]
    assert len(out._backward_hooks or {}) == 0


@pytest.mark.parametrize("as_module", [True, False])
def test_instrument_preserves_results_and_numbers_calls(conv32, as_module):
    den = conv32 if as_module else (lambda x, s: conv32(x, s))
    wrapped = instrument(den)
    assert isinstance(wrapped, torch.nn.Module) == as_module
    if as_module:
        assert {id(p) for p in wrapped.parameters()} == {id(p) for p in conv32.parameters()}
    x = z0_like(dtype=torch.float32)
    s = torch.full((2,), 3.0)
    torch.testing.assert_close(wrapped(x, s), den(x, s), rtol=0, atol=0)
    z = x.clone().requires_grad_(True)
    with trace() as tr:
        probe(z, "z0", kind="z0")
        y = z
        for _ in range(3):
            y = wrapped(y, s)
        y.sum().backward()
    names = [p.name for p in tr.stats]
    assert names == ["z0", "D_in[0]", "D_out[0]", "D_in[1]", "D_out[1]", "D_in[2]", "D_out[2]"]
    assert [p.step for p in tr.stats[1:]] == [0, 0, 1, 1, 2, 2]
    assert all(p.reached for p in tr.stats)
    assert instrument(wrapped) is wrapped


def test_instrument_checks_output_shape_and_rejects_non_callables():
    with pytest.raises(DenoiserError, match=r"shape \(2, 3\)"):
        instrument(lambda x, s: x[:, :3])(torch.randn(2, 5), 1.0)
    with pytest.raises(DenoiserError, match="callable"):
        instrument(42)


def test_probing_the_same_tensor_twice_under_one_name_records_once():
    x = torch.randn(3, requires_grad=True)
    with trace() as tr:
        probe(x, "z0", kind="z0")
        probe(x, "z0", kind="z0")
        (x * 2).sum().backward()
    assert [s.name for s in tr.stats] == ["z0"]


def test_built_in_sampler_probes_every_state_call_and_noise(conv32):
    z = z0_like(dtype=torch.float32).requires_grad_(True)
    with trace() as tr:
        out = sampler(conv32, "learnable_step_noise", steps=3)(z)
        out.sum().backward()
    names = [p.name for p in tr.stats]
    assert names == ["z0", "x_T", "eps[0]", "D_in[0]", "D_out[0]", "x[1]", "eps[1]", "D_in[1]",
                     "D_out[1]", "x[2]", "eps[2]", "D_in[2]", "D_out[2]", "x[3]", "D_in[3]",
                     "D_out[3]"]
    assert all(p.reached for p in tr.stats)
    assert all(p.connected_to_z0 for p in tr.stats if p.kind == "step_noise")
    sig = {p.name: p.sigma for p in tr.stats}
    assert sig["x_T"] == pytest.approx(80.0) and sig["D_in[3]"] == pytest.approx(0.002)


def test_seeded_draws_the_seeded_stream_and_restores_the_generator():
    from gradcheck.rng import seeded

    torch.manual_seed(123)
    before = torch.get_rng_state()
    with seeded(7, torch.device("cpu")):
        inside = torch.randn(5)
    assert torch.equal(inside, torch.randn(5, generator=torch.Generator().manual_seed(7)))
    assert torch.equal(torch.get_rng_state(), before)  # the user's stream goes on unchanged
    with pytest.raises(RuntimeError):
        with seeded(7, torch.device("cpu")):
            torch.rand(1)
            raise RuntimeError("the sampler raised")
    assert torch.equal(torch.get_rng_state(), before)


def test_first_values_reads_each_tensors_first_element_in_order():
    from gradcheck.probes import first_values

    ts = [torch.tensor(2.5), torch.full((4,), 0.75), torch.empty(0),
          torch.tensor([3.0, 9.0], dtype=torch.float64), torch.arange(6.).reshape(2, 3).t()[1:],
          torch.tensor(7.0, requires_grad=True)]
    assert first_values(ts) == [2.5, 0.75, None, 3.0, 1.0, 7.0]
    assert first_values([]) == []


def test_a_probes_sigma_tensor_is_reported_as_its_first_element():
    with trace() as tr:
        x = torch.randn(2, 3, requires_grad=True)
        probe(x * 2, "y", kind="state", sigma=torch.full((2,), 1.5))
        probe(x * 3, "w", kind="state", sigma=0.25)
        (x * 2).sum().backward()
    assert [s.sigma for s in tr.stats] == [1.5, 0.25]


def test_the_collector_is_paused_only_inside_gradchecks_walk_and_restored_as_found():
    import gc

    from gradcheck.graph import collector_paused

    seen = []
    assert gc.isenabled()
    with collector_paused():
        seen.append(gc.isenabled())
        with collector_paused():  # nested: the outer one restores
            pass
        seen.append(gc.isenabled())
    assert seen == [False, False] and gc.isenabled()
    with pytest.raises(ValueError):
        with collector_paused():
            raise ValueError("raised inside")
    assert gc.isenabled()
    gc.disable()  # a user who runs with the collector off keeps it off
    try:
        with collector_paused():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_a_diagnosis_runs_the_users_sampler_with_the_collector_as_the_user_left_it():
    import gc

    states = []

    def sampler(z):
        states.append(gc.isenabled())
        return (z * 2).sin()

    z0 = torch.randn(2, 3)
    rep = gradcheck.diagnose(sampler, z0, target=torch.zeros(2, 3), optim_steps=0)
    assert states and all(states) and gc.isenabled(), states
    assert rep.handles["z0_grad"] is not None


def _captured_run(capture: bool, user_hook: bool = False, dtype=torch.float64):
    """The same little graph recorded with hooks (capture=False) or with captured edges."""
    x = torch.linspace(-1, 2, 12, dtype=torch.float64).reshape(3, 4).to(dtype).requires_grad_(True)
    with trace(capture=capture) as tr:
        probe(x, "x", kind="z0")
        y = x * 2.0
        if user_hook:  # the user's hook, registered before the probe, rescales what flows on
            y.register_hook(lambda g: g * 3.0)
        y = probe(y, "y", kind="state")
        twice = probe(y.sin(), "twice", kind="state")  # used twice: its gradients accumulate
        probe(twice, "twice again", kind="state")  # a second name on the same value
        unused = probe(x * 5.0, "unused", kind="state")  # in the graph, never used
        big = probe(torch.cat([y] * 500, 1), "big", kind="state")  # over DEFER_NUMEL: hooked
        loss = probe((twice * twice).sum() + twice.sum() + big.square().mean(), "loss",
                     kind="loss")
        edges = tr.capture_edges()
        grads = torch.autograd.grad(loss, [x, *edges], allow_unused=True)
        tr.deliver(grads[1:])
        hooks = tr.hooks_registered
    del unused
    return {s.name: (s.reached, s.norm, s.mean_abs, s.max_abs, s.nonfinite) for s in tr.stats}, \
        hooks, grads[0]


@pytest.mark.parametrize("user_hook", [False, True])
def test_captured_probes_record_what_their_hooks_would(user_hook):
    """Trace(capture=True) (the record pass) hands the small probed values' gradient edges to
    the caller's autograd.grad instead of hooking them: the statistics are the hooks' exactly,
    also for a value used twice, two probes on one value, a value no gradient reaches, and a
    value with a gradient hook of the user's, which keeps a hook of ours (autograd would
    capture the gradient before the user's hook rescales it)."""
    hooked, n_hooked, g_hooked = _captured_run(False, user_hook)
    captured, n_captured, g_captured = _captured_run(True, user_hook)
    assert captured == hooked
    assert torch.equal(g_hooked, g_captured)
    assert not captured["unused"][0] and captured["twice again"][0]
    # hooked with capture: x (a leaf), big (too large), y only when the user hooked it first
    assert n_hooked == 7 and n_captured == (3 if user_hook else 2)
    # the probe records the gradient the user's hook passes on (3x), which reaches x doubled
    assert captured["x"][1] == pytest.approx(2 * captured["y"][1], rel=1e-12)
    if user_hook:
        raw = _captured_run(True, False)[0]["y"][1]
        assert captured["y"][1] == pytest.approx(3 * raw, rel=1e-12)


def test_op_detail_hooks_do_not_stop_a_probe_from_being_captured():
    """The op detail puts a read-only hook on every op's output; the probes on those outputs
    are still captured (one hook fewer each), and the record's numbers do not change."""
    smp = sampler(build_denoiser("conv", seed=0, dtype=torch.float64))
    z0 = z0_like()
    kw = dict(target=torch.zeros_like(z0), numeric=False, optim_steps=0, locate="never")
    on = gradcheck.diagnose(smp, z0, op_detail="always", **kw)
    off = gradcheck.diagnose(smp, z0, op_detail="never", **kw)
    n_probes = sum(p.requires_grad for p in off.probes)
    leaves = sum(p.kind == "z0" for p in off.probes)
    assert off.hygiene.hooks_registered == leaves < n_probes
    for a, b in zip(on.probes, off.probes):
        assert (a.name, a.reached) == (b.name, b.reached)
        assert a.norm == pytest.approx(b.norm, rel=1e-12, abs=0)


def test_a_value_probed_after_the_edges_were_taken_is_hooked():
    """A value probed once the backward's edges are taken (a recomputation inside the
    backward) cannot be captured any more: it gets a hook, and its gradient is recorded."""
    x = torch.randn(5, dtype=torch.float64, requires_grad=True)
    with trace(capture=True) as tr:
        a = probe(x * 2.0, "a", kind="state")
        edges = tr.capture_edges()
        assert tr.hooks_registered == 0 and len(edges) == 1
        b = probe(a * 3.0, "b", kind="state")
        assert tr.hooks_registered == 1
        grads = torch.autograd.grad(b.sum(), [x, *edges])
        tr.deliver(grads[1:])
    st = {s.name: s for s in tr.stats}
    assert st["b"].norm == pytest.approx(5 ** 0.5) and st["a"].norm == pytest.approx(3 * 5 ** 0.5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_captured_statistics_match_in_low_precision_and_bf16_stays_hooked(dtype):
    """float32 values are captured like float64 ones, with the hooks' statistics; bfloat16 ones
    (a bf16 denoiser's output) are not held by HeldGrads, so they keep their hooks."""
    hooked, n_hooked, g_hooked = _captured_run(False, dtype=dtype)
    captured, n_captured, g_captured = _captured_run(True, dtype=dtype)
    assert captured == hooked and torch.equal(g_hooked, g_captured)
    assert n_captured == (2 if dtype == torch.float32 else n_hooked)


def test_is_connected_follows_only_paths_that_carry_gradient():
    """A step noise counts as connected to z0 only along a path whose gradient is not zero
    everywhere (round, floor, sign, ...); another leaf, or a value made without grad, is not."""
    from gradcheck.graph import is_connected

    z = torch.randn(4, requires_grad=True)
    other = torch.randn(4, requires_grad=True)
    assert is_connected(z, z)
    assert is_connected((z * 2.0).flip(0).sin(), z)
    assert not is_connected(torch.round(z * 3.0) * 2.0, z)  # only through round
    assert is_connected(torch.round(z) + z.exp(), z)  # one path carries gradient
    assert not is_connected(other * 2.0, z) and not is_connected(z.detach() * 2.0, z)
    assert not is_connected(torch.sign(z).cumsum(0) + other, z)
