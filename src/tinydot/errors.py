"""Errors a user can cause. The CLI prints their one-line message and exits with status 2.

Bugs are not wrapped: they still raise their ordinary exceptions with a traceback.
"""


class TinydotError(Exception):
    """A mistake in input, configuration or environment that the user can fix."""


class DataError(TinydotError):
    """Stroke data that is missing, corrupt or malformed."""


class ConfigError(TinydotError):
    """A configuration value outside its allowed range."""
