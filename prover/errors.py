"""User-facing error type of the prover package.

Library code raises `UserError` (or a subclass) for anything a user can fix: a bad path, a
malformed file, an unknown name, an invalid config value. The CLI turns it into one red line
on stderr and exit status 2; it never becomes a traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """A mistake the user can fix. `str(error)` is the whole message, one line."""

    exit_code = 2
