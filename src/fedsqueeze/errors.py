"""Errors a user can cause. The CLI turns each into one clear line and exit code 2."""


class UserError(Exception):
    """A mistake in the user's config, data or command line (exit code 2, no traceback)."""


class ConfigError(UserError):
    pass


class DataError(UserError):
    pass
