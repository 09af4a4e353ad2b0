"""svfrd: a service that restores damaged face videos with SVFR."""

__version__ = "0.1.0"
