"""Other ways to reach Lean, behind the same acceptance rules (`lean_env.acceptance`).

    kimina   a client of a running kimina-lean-server (HTTP; whole-proof checking)
    dojo     a LeanDojo adapter with the TacticSession interface (tactic mode, traced repos)

Both are optional extras: each imports its third-party library (httpx, lean_dojo) lazily.
"""
