"""The errors a user can fix: bad data, a bad configuration, an artifact that does not match its
manifest, a server that does not answer or refuses the credentials, a full disk.

Their message names the file, field or setting and the fix, so a command ends with that message
alone (exit code 2, no traceback). Any other exception is a bug, and keeps its traceback.
"""

from __future__ import annotations

import errno

# the disk is full or the quota spent: nothing the code can do, everything the user can
NO_ROOM = (errno.ENOSPC, errno.EDQUOT)


class UserError(Exception):
    """A mistake in what the user gave or set up, explained by the message."""


class InvalidSetting(UserError, ValueError):
    """A value of the command line, a config file or the environment that cannot work."""


def user_message(error: BaseException) -> str | None:
    """What to tell the user about ``error``, or None when it is a bug."""
    if isinstance(error, UserError):
        return str(error)
    cause: BaseException | None = error
    while cause is not None:  # libraries that save files (Keras, pyarrow) wrap the OSError in their own
        if isinstance(cause, OSError) and cause.errno in NO_ROOM:
            where = f" writing {cause.filename}" if cause.filename else ""
            return (f"no space left on the device{where} ({cause.strerror}): free some, or point SSL_PIPELINE_HOME or "
                    "SSL_PIPELINE_STORE at a larger disk, then run the same command again; finished stages are reused")
        cause = cause.__cause__ or cause.__context__
    return None
