"""The one exception type users see as a one-line message (no traceback unless ``--debug``)."""


class GanplugError(Exception):
    """Something the user can fix: the message says what was wrong and what to do."""
