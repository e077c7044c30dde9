"""The one exception type for errors a user can cause and fix."""

__all__ = ["MaskjobError"]


class MaskjobError(Exception):
    """A user-fixable problem: bad path, corrupt image, missing weights, bad config.

    The message says what went wrong and what to do. The CLI prints it without a
    traceback and exits with status 2.
    """
