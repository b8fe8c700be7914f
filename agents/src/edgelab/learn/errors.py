"""The one exception of the learning core."""

from __future__ import annotations


class LearnError(ValueError):
    """Input the learning core cannot use (bad table, bad timestamps, too few samples,
    an impossible K). The message says what is wrong and what to change; command lines
    print it as one line and exit 2, services answer it as a 4xx."""


def require_sklearn() -> None:
    """Fail with what to install when scikit-learn is missing (it is the package's
    `learn` extra, not a base dependency)."""
    try:
        import sklearn  # noqa: F401 - only checking that it is there
    except ImportError:
        raise RuntimeError("scikit-learn is not installed: install the package's learn extra "
                           "(pip install 'edgelab-agents[learn]')") from None
