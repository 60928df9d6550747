"""The policy: our DeepSeek-V3-architecture model (MLA, DeepSeekMoE, MTP), its tokenizer,
Hugging Face-format checkpoints, and generation engines (vLLM, transformers).

Knows nothing of Lean. Nothing happens at import time (torch is imported by submodules).
"""
