"""The one exception type for user mistakes: reported as a single line, never a stack trace."""


class UserError(Exception):
    """Bad input (config, path, model, data): the message says what was wrong and what to do."""
