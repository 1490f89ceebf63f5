"""The one exception a user's config mistake raises."""


class ConfigError(ValueError):
    """A problem with the config the user handed in; its message is one sentence naming the key."""
