"""gradcheck's exceptions. Each message names the offending value and says what to do."""
from __future__ import annotations


class GradcheckError(Exception):
    """Base class: anything gradcheck refuses or cannot do. The CLI prints it as one line."""


class ConfigError(GradcheckError, ValueError):
    """A bad option or argument: unknown mode or solver, steps < 1, sigma_min >= sigma_max, ..."""


class InputError(GradcheckError, ValueError):
    """A bad input tensor, e.g. z0 containing NaN or Inf."""


class DenoiserError(GradcheckError):
    """The denoiser could not be loaded, or returned something that is not a tensor of x's shape."""


class OutputError(GradcheckError, OSError):
    """The output directory cannot be created or written."""
