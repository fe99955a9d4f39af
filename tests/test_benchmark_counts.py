"""The instruction counts that benchmarks/overhead.py reads from callgrind's dumps: one pass per
dump, the libraries' share of it (a function's name may first appear as a callee, and the cost
line after ``calls=`` is the call's inclusive cost, not the caller's own), and the break-even
arithmetic quoted in the README."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def overhead():
    spec = importlib.util.spec_from_file_location("overhead_bench",
                                                  ROOT / "benchmarks" / "overhead.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# a dump in callgrind's format, compressed names: mkl_kernel is named first as a callee (cfn=),
# later opened as fn=(2) without its name; main's call to it carries an inclusive cost (700)
# that must not count as main's own
DUMP = """\
version: 1
creator: callgrind-3.19.0
cmd: python
part: 1
desc: Trigger: Client Request: plain
positions: line
events: Ir
summary: 1000

ob=(1) /lib/libtorch_cpu.so
fl=(1) ???
fn=(1) main
0 200
cfn=(2) mkl_blas_avx_sgemm
calls=3 0
0 700
+2 40
fn=(2)
0 700
fn=(3) 0x000000000dcf2770
0 50
fn=(4) std::_Function_handler<void (long), dnnl::impl::cpu::im2col_3d<float>>
* 5
fn=(5) at::native::add_kernel
-1 5

totals: 1000
"""


def test_self_cost_follows_names_defined_as_callees(overhead):
    assert overhead._self_cost(DUMP, lambda fn: fn.startswith("mkl_")) == 700
    assert overhead._self_cost(DUMP, lambda fn: fn == "main") == 240  # not the call's 700
    assert overhead._self_cost(DUMP, overhead._kernel) == 700 + 50 + 5
    assert overhead._self_cost(DUMP, lambda fn: True) == 1000


def test_dumps_yield_each_pass_with_its_library_share(overhead, tmp_path):
    (tmp_path / "cg-x-0.1").write_text(DUMP)
    (tmp_path / "cg-x-0.2").write_text(DUMP.replace("Request: plain", "Request: diagnosis")
                                       .replace("summary: 1000", "summary: 1100")
                                       .replace("totals: 1000", "totals: 1100"))
    (tmp_path / "cg-x-0").write_text(DUMP.replace("Client Request: plain",
                                                  "Program termination"))
    got = list(overhead._dumps(str(tmp_path / "cg-x-0")))
    assert got == [("plain", 1000, 0.755), ("diagnosis", 1100, 755 / 1100)]


def test_break_even_factor_puts_the_ratio_on_the_bar(overhead):
    plain, share, extra = 58_021.0, 0.98, 245.0
    f = overhead._break_even(plain, share, extra)
    shrunk = plain * share / f + plain * (1 - share)
    assert extra / shrunk == pytest.approx(0.05)
    # a ratio already over the bar: the libraries would have to grow (f < 1)
    assert overhead._break_even(100.0, 0.5, 8.0) < 1
    # under the bar even if the libraries cost nothing: no factor reaches it
    assert overhead._break_even(100.0, 0.5, 1.0) == float("inf")
