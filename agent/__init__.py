"""Faultline runtime: MQTT intake, pipeline, alerts and the command line."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("faultline")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+source"

__all__ = ["__version__"]
