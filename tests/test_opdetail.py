"""The op-level view: every op of the recorded graph lands in one region, each op's |g| equals
the gradient autograd computes at that op's output, and each op names the line that made it."""
from __future__ import annotations

import inspect

import pytest
import torch

import gradcheck
from gradcheck import opdetail
from gradcheck.sampling import ResSampler, SamplerConfig, build_denoiser


def _line_of(fn, text: str) -> int:
    src, first = inspect.getsourcelines(fn)
    return first + next(i for i, s in enumerate(src) if text in s)


def _tiny(z: torch.Tensor) -> torch.Tensor:
    x = gradcheck.probe(z * 3.0, "x", step=0, kind="state")
    a = x * 2.0  # MulBackward0
    b = a.sin()  # SinBackward0
    return gradcheck.probe(b + x, "y", step=1, kind="state")


def test_op_grads_are_the_gradient_at_each_ops_output_and_name_their_line():
    torch.manual_seed(0)
    z0 = torch.randn(3, dtype=torch.float64)
    rep = gradcheck.diagnose(_tiny, z0, target=torch.zeros(3, dtype=torch.float64),
                             numeric=False, optim_steps=0, op_detail="always")
    g = rep.graph
    assert g.detail and g.detail_skipped is None
    y = next(p for p in rep.probes if p.name == "y")
    reg = next(r for r in g.regions if r.probe == y.order)
    assert reg.ops[0] == "AddBackward0" and sorted(reg.ops[1:]) == ["MulBackward0", "SinBackward0"]
    # the oracle: the same function by hand, gradients at every intermediate
    z = z0.clone().requires_grad_(True)
    x = z * 3.0
    a = x * 2.0
    b = a.sin()
    yv = b + x
    loss = torch.nn.functional.mse_loss(yv, torch.zeros(3, dtype=torch.float64))
    gy, gb, ga = torch.autograd.grad(loss, [yv, b, a])
    want = {"AddBackward0": gy.norm().item(), "SinBackward0": gb.norm().item(),
            "MulBackward0": ga.norm().item()}
    for op, got in zip(reg.ops, reg.grads):
        assert got == pytest.approx(want[op], rel=1e-12), op
    where = dict(zip(reg.ops, reg.where))
    assert where["SinBackward0"].endswith(f"test_opdetail.py:{_line_of(_tiny, 'a.sin()')}")
    assert where["MulBackward0"].endswith(f"test_opdetail.py:{_line_of(_tiny, 'x * 2.0')}")
    # the region's ops come from probe x: the edge into the op view names it
    xp = next(p for p in rep.probes if p.name == "x")
    assert {s for s, _ in reg.sources} == {xp.order}
    hyg = next(c for c in rep.checks if c.name == "trace_hygiene")
    assert hyg.passed, hyg.message


def test_every_op_of_the_graph_is_in_exactly_one_region_at_35_steps():
    s = ResSampler(build_denoiser("conv"), SamplerConfig(steps=35), mode="learnable_step_noise")
    rep = gradcheck.diagnose(s, torch.randn(1, 1, 8, 8), numeric=False,
                             optim_steps=0)
    g = rep.graph
    counted = sum(sum(v.values()) for v in g.region_ops.values())
    kept = sum(len(r.ops) - 1 + r.dropped for r in g.regions)
    assert kept == counted > 35 * 30
    assert {r.probe for r in g.regions} == {int(k) for k in g.region_ops}
    assert g.detail  # a 35-step run of the built-in model is well inside auto's budget
    for r in g.regions:
        n = len(r.ops)
        assert all(0 <= a < n and 0 <= b < n for a, b in r.edges)
        assert all(0 <= i < n for _, i in r.sources)
        assert len(r.grads) == len(r.where) == n
    # every op of a denoiser call is reached by gradient and has a line of the denoiser
    d = next(r for r in g.regions if r.ops.count("ConvolutionBackward0") >= 5)
    assert all(v is not None and v > 0 for v in d.grads)
    assert sum(w is not None and "denoisers.py" in w for w in d.where) > len(d.where) // 2


def test_op_detail_policies():
    s = ResSampler(build_denoiser("conv"), SamplerConfig(steps=2), mode="default")
    z0 = torch.randn(1, 1, 8, 8)
    never = gradcheck.diagnose(s, z0, numeric=False, optim_steps=0, op_detail="never")
    assert not never.graph.detail and never.graph.detail_skipped == "op_detail='never'"
    assert never.graph.regions and all(r.grads is None for r in never.graph.regions)
    with pytest.raises(gradcheck.GradcheckError, match="op_detail must be"):
        gradcheck.diagnose(s, z0, op_detail="sometimes")


def test_auto_drops_the_detail_of_a_forward_pass_past_its_budget(monkeypatch):
    monkeypatch.setattr(opdetail, "AUTO_BUDGET_OPS", 10)
    import gradcheck.recording as rec  # the recorded pass decides

    monkeypatch.setattr(rec, "AUTO_BUDGET_OPS", 10)
    s = ResSampler(build_denoiser("conv"), SamplerConfig(steps=3), mode="default")
    rep = gradcheck.diagnose(s, torch.randn(1, 1, 8, 8), numeric=False,
                             optim_steps=0)
    assert not rep.graph.detail
    assert "more than 10 torch calls" in rep.graph.detail_skipped and "--op-detail always" in \
        rep.graph.detail_skipped
    assert all(r.grads is None and r.where is None for r in rep.graph.regions)
    hyg = next(c for c in rep.checks if c.name == "trace_hygiene")
    assert hyg.passed
    # the hooks it had put on the ops' outputs before it stopped were taken off then
    assert rep.hygiene.hooks_left == 0 and rep.hygiene.hooks_registered > 0


def test_the_op_hooks_leave_the_gradient_and_the_users_tensors_alone(monkeypatch):
    """The op detail's hooks on op outputs only read: dL/dz0 is bit-identical with and without
    them, and none stays on a tensor the sampler hands back. Small outputs get no hook at all:
    their gradient edges are captured by the record's backward, which records the same |g| a
    hook does (every output hooked: CAPTURE_NUMEL 0)."""
    s = ResSampler(build_denoiser("conv").double(), SamplerConfig(steps=3), mode="default")
    z0 = torch.randn(1, 1, 8, 8, dtype=torch.float64)
    on = gradcheck.diagnose(s, z0, numeric=False, optim_steps=0, op_detail="always")
    off = gradcheck.diagnose(s, z0, numeric=False, optim_steps=0, op_detail="never")
    monkeypatch.setattr("gradcheck.opdetail.CAPTURE_NUMEL", 0)
    hooked = gradcheck.diagnose(s, z0, numeric=False, optim_steps=0, op_detail="always")
    assert on.graph.detail and not off.graph.detail and hooked.graph.detail
    assert torch.equal(on.handles["z0_grad"], off.handles["z0_grad"])
    assert torch.equal(hooked.handles["z0_grad"], off.handles["z0_grad"])
    assert on.hygiene.hooks_left == 0 == hooked.hygiene.hooks_left
    assert hooked.hygiene.hooks_registered > on.hygiene.hooks_registered >= \
        off.hygiene.hooks_registered
    n = 0
    for a, b in zip(on.graph.regions, hooked.graph.regions):
        assert a.ops == b.ops and a.not_asked == b.not_asked
        for x, y in zip(a.grads, b.grads):
            assert (x is None) == (y is None)
            if x is not None:
                assert x == pytest.approx(y, rel=1e-12, abs=0)
                n += 1
    assert n > 20


def test_weights_that_require_grad_are_not_differentiated_unless_asked():
    """A diffusers UNet's weights require grad by default: the record pass leaves them out (they
    do not change dL/dz0), and differentiates them with grad_weights=True."""
    torch.manual_seed(0)
    lin = torch.nn.Linear(4, 4).double()  # weights require grad, as a fresh model's do
    fired = []
    lin.weight.register_hook(lambda g: fired.append(1))

    def sample(z):
        return gradcheck.probe(lin(z).tanh(), "y", step=0, kind="state")

    z0 = torch.randn(2, 4, dtype=torch.float64)
    kw = dict(target=torch.zeros(2, 4, dtype=torch.float64), numeric=False, optim_steps=0)
    a = gradcheck.diagnose(sample, z0, **kw)
    assert fired == [] and a.passed and lin.weight.grad is None
    b = gradcheck.diagnose(sample, z0, grad_weights=True, **kw)
    assert fired == [1] and lin.weight.grad is None  # .grad untouched either way
    # the same dL/dz0 either way
    torch.testing.assert_close(a.handles["z0_grad"], b.handles["z0_grad"], rtol=0, atol=0)


def _cut_sampler(net, cut_at: int, steps: int = 6):
    """A loop whose state is detached before step ``cut_at`` (a DRaFT-K-style truncation, or
    a stray .detach()) while the model's weights, which require grad, keep the output in the
    autograd graph."""
    def sample(z):
        x = z * 3.0
        for i in range(steps):
            x = gradcheck.probe(x, f"x[{i}]", step=i, kind="state")
            if i == cut_at:
                x = x.detach()
            x = x + 0.3 * (net(x) - x)
        return x
    return sample


@pytest.mark.parametrize("cut_at,capture_graph,hooked", [
    (0, True, False), (2, True, False), (5, True, False), (2, False, False),
    (0, True, True), (2, True, True), (5, True, True)])
def test_a_cut_below_weights_that_require_grad_still_shows_the_gradient_above_it(
        cut_at, capture_graph, hooked, monkeypatch):
    """With z0 cut off from the loss, differentiating z0 only would let autograd prune the whole
    backward: no probe reached, not even the output. The probes above the cut must carry their
    true gradient (the one grad_weights=True computes), those below none, and the break must
    be named between them. Without the graph walk (no backward plan) too: the probed values
    are captured edges of the backward. And with every probe hooked (values too large to
    capture): the plan then adds the gradient edges of the probes just above the cut."""
    if hooked:
        monkeypatch.setattr("gradcheck.gradstats.DEFER_NUMEL", 0)
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(),
                              torch.nn.Linear(16, 8)).double()
    z0 = torch.randn(3, 8, dtype=torch.float64)
    kw = dict(target=torch.zeros(3, 8, dtype=torch.float64), numeric=False, optim_steps=0)
    rep = gradcheck.diagnose(_cut_sampler(net, cut_at), z0, locate="auto",
                             capture_graph=capture_graph, **kw)
    ref = gradcheck.diagnose(_cut_sampler(net, cut_at), z0, grad_weights=True, locate="never",
                             **kw)
    assert not rep.passed and all(p.grad is None for p in net.parameters())
    by = {p.name: p for p in rep.probes}
    for p in ref.probes:
        assert by[p.name].reached == p.reached, p.name
        if p.reached:
            assert by[p.name].norm == pytest.approx(p.norm, rel=1e-12), p.name
    states = [by[f"x[{i}]"] for i in range(6)]
    assert [s.reached for s in states] == [i > cut_at for i in range(6)]
    assert by["output"].reached and by["loss"].reached and not by["z0"].reached
    msg = next(c.message for c in rep.checks if c.name == "grad_reaches_z0")
    assert f"breaks at step {cut_at}" in msg and "cause: .detach()" in msg
    assert "does not reach the output" not in " ".join(c.message for c in rep.failed)


class _EmbDenoiser(torch.nn.Module):
    """A denoiser with a sigma-embedding branch, as diffusion models have: the branch reads the
    weights and sigma only, never x. ``snap`` rounds x on the way in (a real stop: zero
    gradient everywhere)."""

    def __init__(self, snap: bool = False, snap_input: bool = False) -> None:
        super().__init__()
        self.snap_input = snap_input
        self.emb = torch.nn.Sequential(torch.nn.Linear(1, 8), torch.nn.SiLU(),
                                       torch.nn.Linear(8, 8))
        self.body = torch.nn.Linear(8, 8)
        self.snap = snap

    def forward(self, x, sigma):
        e = self.emb(torch.full((x.shape[0], 1), float(sigma), dtype=x.dtype))
        if self.snap_input:  # the probed input itself goes through round()
            x = torch.round(x)
        return self.body(torch.round(x * 1.0) if self.snap else x) + e


def _emb_run(snap=False, snap_input=False, **kw):
    torch.manual_seed(0)
    den = gradcheck.instrument(_EmbDenoiser(snap, snap_input).double())  # weights require grad

    def sample(z):
        x = z * 2.0
        for i, (s0, s1) in enumerate([(2.0, 1.0), (1.0, 0.5)]):
            x = gradcheck.probe(x, f"x[{i}]", step=i, kind="state")
            x = x + (s1 / s0 - 1) * (x - den(x, s0))
        return x

    return gradcheck.diagnose(sample, torch.randn(3, 8, dtype=torch.float64), numeric=False,
                              optim_steps=0, op_detail="always", locate="never", **kw)


def test_ops_that_read_weights_only_are_not_drawn_as_a_stop():
    """With the weights' gradient not asked for (the default), none arrives at a sigma
    embedding's ops or a weight's transpose: the op view marks them ``not_asked``, never as an
    edge where the gradient stops. grad_weights=True computes their gradient."""
    from gradcheck.report.opviews import op_views

    rep = _emb_run()
    assert rep.passed
    den_regions = [r for r in rep.graph.regions if r.weights]
    assert den_regions and all(r.not_asked for r in den_regions)
    for r in den_regions:
        assert {r.ops[i] for i in r.not_asked} == {"AddmmBackward0", "SiluBackward0",
                                                   "TBackward0"}
        assert all(r.grads[i] is None for i in r.not_asked)
        assert all(r.grads[i] is not None for i in range(len(r.ops)) if i not in r.not_asked)
    views = op_views(rep, {})
    assert not [e for v in views.values() for e in v["e"] if e[2] == 1]  # no stop drawn
    assert sum(n[5] == "not_asked" for v in views.values() for n in v["n"]) == \
        sum(len(r.not_asked) for r in den_regions)
    full = _emb_run(grad_weights=True)
    for r in full.graph.regions:
        assert r.not_asked == []
        assert all(g is not None for g, w in zip(r.grads, r.where) if w is not None)
    views = op_views(full, {})
    assert not [e for v in views.values() for e in v["e"] if e[2] == 1]  # no stop drawn
    assert {n[5] for v in views.values() for n in v["n"]} <= {"ok", "unrecorded"}


def test_a_real_stop_among_weight_only_ops_is_still_drawn():
    """round() in the path from x: its zero gradient is a stop; the embedding beside it is not."""
    from gradcheck.report.opviews import op_views

    rep = _emb_run(snap=True)
    assert not rep.passed
    views = op_views(rep, {})
    stops = [(v["n"][e[0]], v["n"][e[1]]) for v in views.values() for e in v["e"] if e[2] == 1]
    assert stops and all(a[5] == "zero" for a, _ in stops)
    assert any(n[5] == "not_asked" for v in views.values() for n in v["n"])


@pytest.mark.parametrize("grad_weights", [False, True])
def test_a_healthy_diffusers_unet_draws_no_stop_in_its_op_views(grad_weights):
    """A stock UNet2DModel, weights requiring grad, through the diffusers adapter: before, its
    op views of a 3-step run drew 36 (z0 only) and 66 (grad_weights) edges where 'the gradient
    stops', on a healthy run: at its time embedding and the weights' transposes inside linear."""
    diffusers = pytest.importorskip("diffusers")
    from gradcheck import adapters
    from gradcheck.report.opviews import op_views

    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(
        sample_size=16, in_channels=1, out_channels=1, layers_per_block=1,
        block_out_channels=(32, 64), down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=8).eval()
    fn = adapters.diffusers_loop(unet, diffusers.DDIMScheduler(num_train_timesteps=1000),
                                 steps=2)
    z0 = torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    rep = gradcheck.diagnose(fn, z0, numeric=False, optim_steps=0, locate="never",
                             op_detail="always", grad_weights=grad_weights)
    assert rep.passed
    views = op_views(rep, {})
    states = [n[5] for v in views.values() for n in v["n"]]
    assert not [e for v in views.values() for e in v["e"] if e[2] == 1]
    assert "unreached" not in states and states.count("ok") > 100
    assert ("not_asked" in states) == (not grad_weights)


def test_a_stop_right_after_a_probe_is_drawn_on_the_probes_edge():
    """round() applied to the probed denoiser input: the probe gets a zero gradient, the round
    op above it a non-zero one, so the stop is the edge from the probe to that op."""
    from gradcheck.report.opviews import op_views

    rep = _emb_run(snap_input=True)
    assert not rep.passed
    views = op_views(rep, {})
    stops = [(v["n"][e[0]], v["n"][e[1]]) for v in views.values() for e in v["e"] if e[2] == 1]
    assert stops and all(a[2] == -2 and a[5] == "zero" and b[5] == "ok" for a, b in stops)
    assert all(rep.probes[a[3]].kind == "denoiser_in" for a, _ in stops)
    healthy = op_views(_emb_run(), {})
    assert not [e for v in healthy.values() for e in v["e"] if e[2] == 1]


def test_a_probe_taken_after_its_value_was_used_still_counts_as_differentiated():
    """Two values are probed after the denoiser has read them, the later-made one first (probe
    order is not graph order, two levels deep): the denoiser's ops still lie on the path to z0,
    none of them 'not asked'."""
    torch.manual_seed(0)
    den = gradcheck.instrument(_EmbDenoiser().double())

    def sample(z):
        x = z * 2.0
        for i, (s0, s1) in enumerate([(2.0, 1.0), (1.0, 0.5)]):
            y = x * 1.0
            w = y * 1.0
            d = den(w, s0)
            gradcheck.probe(w, f"w[{i}]", step=i, kind="custom")  # after den read it
            gradcheck.probe(y, f"y[{i}]", step=i, kind="custom")  # and its source after it
            x = x + (s1 / s0 - 1) * (x - d)
        return x

    rep = gradcheck.diagnose(sample, torch.randn(3, 8, dtype=torch.float64), numeric=False,
                             optim_steps=0, op_detail="always", locate="never")
    assert rep.passed
    for r in (r for r in rep.graph.regions if r.weights):
        on_path = [i for i in range(len(r.ops)) if i not in r.not_asked]
        assert r.ops[0] == "AddBackward0" and 0 in on_path and r.grads[0] is not None
        assert all(r.grads[i] is not None for i in on_path if r.where[i] is not None)
