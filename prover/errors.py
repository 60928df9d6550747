"""User-facing error types of the prover package.

Library code raises `UserError` (or a subclass) for anything a user can fix: a bad path, a
malformed file, an unknown name, an invalid config value. The CLI turns it into one red line
on stderr and its `exit_code` (2); it never becomes a traceback. `CannotCheck` is the other
kind of answer a user gets without a traceback: the input was fine, but nothing could judge
it here (no Lean toolchain, a verifier server that does not answer), exit 3.
"""

from __future__ import annotations


class UserError(Exception):
    """A mistake the user can fix. `str(error)` is the whole message, one line."""

    exit_code = 2


class CannotCheck(UserError):
    """The question was well posed but could not be checked here (infrastructure: no Lean
    toolchain or REPL, a kimina server down). Exit 3, so scripts can tell it from a "no"."""

    exit_code = 3
