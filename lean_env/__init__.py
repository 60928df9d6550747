"""Everything that talks to Lean: REPL client and pool, the acceptance layers (static
allowlist, Lean's checks, the Comparator final judge), tactic sessions, and the backends
behind one interface (`lean_env.verifier.make_verifier`: leanprover-community/repl, the
stand-in for tests, kimina-lean-server; LeanDojo for tactic sessions).

This package never imports torch or the policy: it must run on CPU-only verifier boxes.
Nothing happens at import time.
"""

from lean_env.errors import (
    LeanEnvError,
    PoolSaturatedError,
    ReplCrashedError,
    ReplProtocolError,
    ReplStartError,
    ReplTimeoutError,
)
from lean_env.verdict import (
    Accepted,
    LeanMessage,
    NotChecked,
    Rejected,
    RejectReason,
    TimedOut,
    Verdict,
)

__all__ = [
    "Accepted",
    "LeanEnvError",
    "LeanMessage",
    "NotChecked",
    "PoolSaturatedError",
    "RejectReason",
    "Rejected",
    "ReplCrashedError",
    "ReplProtocolError",
    "ReplStartError",
    "ReplTimeoutError",
    "TimedOut",
    "Verdict",
]
