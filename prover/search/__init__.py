"""Proving methods (ARCHITECTURE.md "Methods"): each takes problems, an engine, a verifier and
budgets, and yields each problem's `ProofResult` as it finishes. Bench and RL rollouts call
them; they never call the CLI.

    whole.py       whole-proof sampling (DeepSeek-Prover-V1.5)
    attempts.py    Attempt, ProofResult, summaries: what every method yields
"""
