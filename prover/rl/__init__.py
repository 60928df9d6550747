"""Learning from Lean: episodes, rewards, the GRPO objective, the learner, SFT.

Shapes shared across the package live in `prover.rl.episodes`; the objective's options are pure
functions (`prover.rl.losses`); the Ray fleet that produces episodes is `prover.fleet`.
"""
