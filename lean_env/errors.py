"""Typed exceptions for failures of our own machinery (LeanDojo's convention).

Lean's judgement of a proof is never an exception: it is a `Verdict` value. What is raised
here is infrastructure: a REPL that would not start, crashed, hung past its wall-clock
limit, or spoke garbage. The pool retries these; they reach callers only when retries are
spent.
"""

from __future__ import annotations


class LeanEnvError(Exception):
    """Base class of every infrastructure failure raised by lean_env."""


class ReplStartError(LeanEnvError):
    """The REPL process could not be started or failed while importing the header."""


class ReplCrashedError(LeanEnvError):
    """The REPL process exited while a request was in flight.

    `is_out_of_memory` is True when the exit looks like the kernel's OOM killer or our
    RLIMIT_AS cap (exit 137 / SIGKILL, or a std::bad_alloc on stderr).
    """

    def __init__(self, message: str, *, returncode: int | None, stderr_tail: str = "",
                 is_out_of_memory: bool = False) -> None:
        super().__init__(message)
        self.returncode = returncode
        self.stderr_tail = stderr_tail
        self.is_out_of_memory = is_out_of_memory


class ReplTimeoutError(LeanEnvError):
    """A request had no reply within its wall-clock limit; the process group was killed."""

    def __init__(self, message: str, *, limit_s: float) -> None:
        super().__init__(message)
        self.limit_s = limit_s


class ReplProtocolError(LeanEnvError):
    """The REPL wrote something that is not a JSON reply of the protocol."""


class PoolSaturatedError(LeanEnvError):
    """More requests wait for a REPL than `VerifierConfig.max_queue` allows (kimina's HTTP 429).

    Back-pressure, not a verdict on any candidate: the caller should slow down and resubmit.
    """


class VerifierConfigError(LeanEnvError):
    """The verifier configuration names no usable backend (a missing rule table, a backend
    that cannot check whole proofs): the user's mistake, not a failure of Lean or of ours."""


class ComparatorMissingError(LeanEnvError):
    """The final judge (leanprover/comparator with lean4export and landrun) is not installed or
    cannot be started; the message says what is missing and what to run."""


class ComparatorCrashedError(LeanEnvError):
    """Comparator died by a signal, or failed before it reached the candidate (while building or
    exporting the trusted challenge): our machinery's failure, not a verdict on the candidate."""

    def __init__(self, message: str, *, returncode: int | None, output_tail: str = "") -> None:
        super().__init__(message)
        self.returncode = returncode
        self.output_tail = output_tail


class ComparatorProtocolError(LeanEnvError):
    """Comparator's output is not in its documented form (exit status, final line, JSON report)."""


class ComparatorTimeoutError(ReplTimeoutError):
    """Comparator ran past its wall-clock limit; its process group was killed. A subclass of
    `ReplTimeoutError`, so callers that handle a REPL timeout handle this one too."""
