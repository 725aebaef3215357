"""The one base class for problems a message can explain (bad parameters, missing data, an unfinished run).

The command line prints these and exits with status 2 instead of a traceback; library callers can catch
`CanaryError` to handle all of them.
"""


class CanaryError(Exception):
    """A user-facing problem with input or state; its message says what is wrong and how to fix it."""
