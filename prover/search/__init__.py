"""Proving methods (ARCHITECTURE.md "Methods"): each takes problems, an engine, a verifier and
budgets, and yields each problem's `ProofResult` as it finishes. Bench and RL rollouts call
them; they never call the CLI.

    attempts.py    Attempt, ProofResult, Budget/BudgetMeter, summaries: what every method yields
    whole.py       whole-proof sampling (DeepSeek-Prover-V1.5), s1 budget forcing, streaming
                   of candidates to the verifier while the next batch is sampled
    repair.py      Lean-feedback repair (Goedel-Prover-V2 / Kimina): failed proofs go back with
                   Lean's errors at the candidate's lines, up to R rounds
    best_first.py  best-first tactic search (ReProver / BFS-Prover) over lean_env tactic sessions
    methods.py     the one dispatcher (`prove_problems`) that prove and bench call
"""
