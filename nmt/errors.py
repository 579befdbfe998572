"""The one exception type that means "the user gave us something wrong".

The CLI turns an `NMTError` into a one-line message on stderr and a non-zero exit status; anything else is
a bug and keeps its traceback.
"""


class NMTError(Exception):
    """A user error: bad path, bad config, mismatched files, bad model file. The message says what and
    where."""
