"""The errors pspnet raises for problems in what its user gave it, as opposed to bugs.

:class:`UserError` is raised by the checks at pspnet's boundaries: a config value, a file (a
checkpoint, an image, a list, a YAML file), a command-line choice. ``python -m pspnet`` prints
its message in one line and exits with status 2; any other exception is a bug and shows its
traceback (``--debug`` shows one for user errors too). It subclasses ``ValueError``, so code
that catches ``ValueError`` keeps working.

:class:`MissingDependency` is an optional package that is not installed (the message says what
to ``pip install``); it subclasses ``ImportError``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

__all__ = ["UserError", "MissingDependency", "user_input"]


class UserError(ValueError):
    """Bad input from the user (a config value, a file, a command-line choice), named in the
    message; reported by the command line in one line, without a traceback."""


class MissingDependency(ImportError):
    """An optional package is not installed; the message gives the ``pip install`` command."""


@contextlib.contextmanager
def user_input(what: str) -> Iterator[None]:
    """Report a ``ValueError`` raised while building something from the user's settings (a model
    from a config, a dataset from its options) as a :class:`UserError` prefixed with ``what``.

    Only for code whose ``ValueError`` can come from nothing but those settings: a constructor's
    argument checks."""
    try:
        yield
    except UserError:
        raise
    except ValueError as e:
        raise UserError(f"{what}: {e}") from e
