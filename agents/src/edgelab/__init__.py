"""edgelab's agents and experiment tools (one package, one console entry point per tool)."""

__version__ = "0.1.0"
