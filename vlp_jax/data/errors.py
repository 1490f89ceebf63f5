"""The one error type for data a user pointed at (paths, columns, unprepared sets): one sentence each."""


class DataError(ValueError):
    """A problem with the data the user pointed at; its message names it and says what to do."""
