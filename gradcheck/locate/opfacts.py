"""What the provenance pass (:mod:`.provenance`) knows of torch ops by name (which cut the
gradient, which draw random numbers, which only read a shape, which leave torch), and of one op's
inputs (:class:`Inputs`). Tables and pure functions of the facts already gathered.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..records import BreakEvent


#: Ops whose gradient is zero almost everywhere: they cut the gradient while keeping requires_grad.
ZERO_GRAD_OPS = {"round", "round_", "floor", "floor_", "ceil", "ceil_", "sign", "sign_", "trunc",
                 "trunc_", "fix", "fix_", "sgn", "heaviside"}
NONDIFF_OPS = ZERO_GRAD_OPS | {
    "argmax", "argmin", "argsort", "gt", "lt", "ge", "le", "eq", "ne", "greater", "less",
    "__gt__", "__lt__", "__ge__", "__le__", "__eq__", "__ne__", "isclose", "isnan", "isinf",
    "isfinite", "logical_and", "logical_or", "logical_not", "bucketize", "searchsorted",
}
CAST_OPS = {"to", "type", "int", "long", "short", "byte", "char", "bool", "type_as"}
ESCAPE_OPS = {"item": "python_roundtrip", "tolist": "python_roundtrip",
              "__int__": "python_roundtrip", "__float__": "python_roundtrip",
              "__index__": "python_roundtrip", "__bool__": "python_roundtrip",
              "numpy": "numpy_roundtrip", "__array__": "numpy_roundtrip"}
RANDOM_OPS = {"randn", "randn_like", "rand", "rand_like", "randint", "randint_like", "normal",
              "normal_", "uniform_", "bernoulli", "bernoulli_", "multinomial", "poisson",
              "exponential_", "geometric_", "log_normal_", "cauchy_", "random_", "randperm"}
#: Ops whose output values do not depend on their inputs' values (only on shape/dtype).
VALUE_FREE = {"zeros_like", "ones_like", "empty_like", "full_like", "new_zeros", "new_ones",
              "new_empty", "new_full", "size", "dim", "numel", "__len__"} | RANDOM_OPS
#: Random draws whose values follow their tensor inputs (a mean, a probability, a rate): from a
#: z0-dependent input, the draw depends on z0 (a distribution's .sample() is such a draw)
VALUE_RANDOM = {"normal", "bernoulli", "poisson", "multinomial", "binomial", "_standard_gamma",
                "_sample_dirichlet"}
VALUE_FREE -= VALUE_RANDOM
ADDITIVE = {"add", "add_", "__add__", "__radd__", "__iadd__", "sub", "sub_", "__sub__",
            "__rsub__", "__isub__", "addcmul", "addcmul_", "lerp", "lerp_"}
#: Constructors that copy a tensor's values into a new tensor outside the graph.
COPY_CONSTRUCTORS = {"tensor", "new_tensor", "as_tensor", "asarray"}
#: Ops whose k-th output is made from the k-th input alone (a constant broadcast beside a
#: z0-dependent value stays a constant).
ONE_TO_ONE = {"broadcast_tensors", "atleast_1d", "atleast_2d", "atleast_3d", "meshgrid"}
#: Ops whose second tensor argument gives only a shape or dtype, not values.
SHAPE_ONLY = {"view_as", "expand_as", "reshape_as", "type_as"}
#: Products: a z0-dependent value times a constant that is exactly zero passes no gradient, by
#: the schedule's design (a structural zero), not because of the data.
PRODUCTS = {"mul", "mul_", "__mul__", "__rmul__", "__imul__", "multiply"}
#: Causes that are grad mode switched off (their events list every site in effect).
GRAD_OFF_CAUSES = {"no_grad", "decorated_no_grad", "inference_mode", "grad_mode_off"}
#: Copies/moves: an escape right after one of these upgrades the cause of the cut before it.
COPY_OPS = {"cpu", "cuda", "to", "contiguous", "clone", "float", "double"}


#: Escapes whose Python result is followed (a float that comes back into a torch op is a bias).
#: ``float(x)`` cannot be: Python turns what ``__float__`` returns into a plain float, so its
#: value is remembered instead and recognised when it comes back (see ``Provenance.escaped``).
TAINTED_ESCAPES = {"item", "tolist"}
#: Cuts whose value, mixed back into a value that carries z0's gradient, makes that gradient
#: wrong (a .detach() can be meant: stop-gradient and straight-through tricks are not flagged).
MIXED_BIAS_CAUSES = {"python_roundtrip", "numpy_roundtrip", "data_read"}


@dataclass
class Inputs:
    """What an op's inputs bring to its outputs (from the facts of each input, ``pre``)."""

    any_dep: bool  # some input depends on z0 (and the op uses values)
    dep_gconn: bool  # some input depends on z0 and carries its gradient
    any_gconn: bool  # some input carries z0's gradient
    ev_in: BreakEvent | None  # the earliest cut an input carries
    direct_in: bool  # ... carried by the output of the op that cut it
    bias_in: BreakEvent | None  # the earliest bias an input carries
    draws: list[dict]  # fresh random draws among inputs that do not depend on z0

    @classmethod
    def of(cls, pre: list, name: str) -> Inputs:
        evs = [m.ev for _, d, g, m in pre if d and not g and m is not None and m.ev is not None]
        ev_in = min(evs, key=lambda e: e.index) if evs else None
        biases = [m.bias for _, _, _, m in pre if m is not None and m.bias is not None]
        direct_in = any(m.direct for _, d, g, m in pre if m is not None and m.ev is ev_in) \
            if ev_in is not None else False
        return cls(
            any_dep=any(d for _, d, _, _ in pre) and name not in VALUE_FREE,
            dep_gconn=any(d and g for _, d, g, _ in pre),
            any_gconn=any(g for _, _, g, _ in pre), ev_in=ev_in, direct_in=direct_in,
            bias_in=min(biases, key=lambda e: e.index) if biases else None,
            draws=[m.rand for _, d, _, m in pre if not d and m is not None and m.rand is not None])


def zero_factor(args: tuple, pre: list) -> bool:
    """A product's factor that is a constant exact zero (a Python 0, or a small tensor that
    depends on neither z0 nor a random draw and is all zeros)."""
    for a in args:
        if isinstance(a, (int, float)) and not isinstance(a, bool) and a == 0:
            return True
    for t, d, _, m in pre:
        if not d and (m is None or m.rand is None) and t.numel() <= 64:
            try:
                if bool((t == 0).all()):
                    return True
            except RuntimeError:
                continue
    return False
