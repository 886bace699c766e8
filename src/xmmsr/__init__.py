"""xmmsr: simulated XMM-Newton EPIC-pn training data and models for de-noising and super-resolution."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("xmmsr")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
