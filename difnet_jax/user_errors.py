"""The errors a user's mistake raises, and the check that raises ConfigError naming the key.

Every one derives from `UserError`: the command lines (experiments/cli.py) print its message as
one line and exit with code 2, without a traceback; any other exception is a program bug and keeps
its traceback. Each also derives from the built-in type code outside the CLIs expects (ValueError,
OSError, FileNotFoundError), so `except ValueError` still catches a ConfigError.

Its own module so that model files (each family checks its own keys), `config_checks` (the shared
keys), the data pipeline and the run loaders all use it without importing each other.
"""

from __future__ import annotations


class UserError(Exception):
    """A mistake in what the user asked for: its message names the key, value or path and what to do."""


class ConfigError(UserError, ValueError):
    """A config key holds a value the project cannot run with (or a config arg names no variant)."""


class ArgumentError(UserError, ValueError):
    """A command-line or API argument that cannot work: a checkpoint step the run lacks, a bad number."""


class PathError(UserError, OSError):
    """A path the user gave cannot be used: not writable, not a folder, no room."""


class MissingPathError(PathError, FileNotFoundError):
    """A file or folder the user named, or the command needs, is not there."""


class ExistingOutputError(PathError, FileExistsError):
    """An output file exists and the command does not overwrite it unless told to (--force)."""


class DatasetNotPreparedError(MissingPathError):
    """A dataset that must be prepared first (`python -m experiments.prepare_data`) is not in its data_dir."""


def require(ok: bool, key: str, value, expected: str) -> None:
    """Raises ConfigError('config.KEY=VALUE is invalid: expected EXPECTED') unless `ok`."""
    if not ok:
        raise ConfigError(f"config.{key}={value!r} is invalid: expected {expected}")


def positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0
