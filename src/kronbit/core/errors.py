"""Errors that mean "the user asked for something we cannot do".

The CLI turns a ``KronbitError`` into one line on stderr and exit code 2. Anything else is a bug
in kronbit and keeps its traceback, so the two are never confused.
"""


class KronbitError(Exception):
    """A user-facing problem: bad config, bad data, missing file. Message must fit on one line."""


class ConfigError(KronbitError):
    """A config or recipe key/value is wrong."""


class DataError(KronbitError):
    """A data file or directory is missing or malformed."""


class ModelError(KronbitError):
    """A model path/id or checkpoint cannot be used."""


class NumericalError(KronbitError):
    """Training diverged (NaN/inf loss or gradients); the last good checkpoint is kept."""
