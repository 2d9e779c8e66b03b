"""The error a bad config value raises, and the check that raises it naming the key.

Its own module so that model files (each family checks its own keys) and
`config_checks` (the shared keys) both use it without importing each other.
"""

from __future__ import annotations


class ConfigError(ValueError):
    """A config key holds a value the project cannot run with."""


def require(ok: bool, key: str, value, expected: str) -> None:
    """Raises ConfigError('config.KEY=VALUE is invalid: expected EXPECTED') unless `ok`."""
    if not ok:
        raise ConfigError(f"config.{key}={value!r} is invalid: expected {expected}")


def positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0
