"""The error type of user mistakes in the configuration (no heavy imports: the command-line
scripts catch it before torch has loaded)."""


class ConfigError(ValueError):
    """A user error in the configuration: scripts print it and exit with status 2."""
