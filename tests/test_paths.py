"""Paths people can read (issue 28, item 4): a break in a file outside the working directory is
shown by its module path (relative to the import root it lies under, as site-packages' files
are) or absolutely, never as a chain of ``../``; its source lines are still shown."""
from __future__ import annotations

import sys
import textwrap

import torch

import gradcheck
from gradcheck.torch_internals import find_source, rel_path

SAMPLER = textwrap.dedent("""
    import torch

    def make(den):
        def sample(z0):
            x = z0 * 10.0
            for i, s in enumerate([10.0, 5.0, 1.0]):
                d = den(x, s)
                if i == 1:
                    d = d.detach()  # the cut
                x = x + (0.5 - 1.0) * (x - d) / s
            return x
        return sample
""")


def test_a_break_in_an_installed_package_is_shown_by_its_module_path(tmp_path, monkeypatch):
    root = tmp_path / "site"
    pkg = root / "vendor_sampler" / "samplers"
    pkg.mkdir(parents=True)
    (root / "vendor_sampler" / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "res.py").write_text(SAMPLER)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.syspath_prepend(str(root))
    from vendor_sampler.samplers import res

    net = torch.nn.Linear(4, 4).double()
    sample = res.make(gradcheck.instrument(lambda x, s: net(x) + x / (1 + s)))
    rep = gradcheck.diagnose(sample, torch.randn(2, 4, dtype=torch.float64))
    ev = rep.locator.primary
    assert ev.cause == "detach" and ev.location == "vendor_sampler/samplers/res.py:10", ev.location
    assert "../" not in ev.location
    assert any("d.detach()" in line for line in ev.source), ev.source  # still read
    sys.modules.pop("vendor_sampler.samplers.res", None)


def test_paths_inside_the_working_directory_stay_relative_and_others_absolute(tmp_path,
                                                                              monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a.py").write_text("x = 1\n")
    assert rel_path(str(tmp_path / "a.py")) == "a.py"
    elsewhere = "/nonexistent-root/x/y.py"
    assert rel_path(elsewhere) == elsewhere
    assert find_source("a.py") == "a.py" and find_source("no/such.py") is None
    assert rel_path("<string>") == "<string>"
