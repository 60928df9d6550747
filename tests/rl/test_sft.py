"""`prover sft`: the pipeline learns what it is shown, its checkpoint runs in vLLM, and a run
killed with SIGKILL continues where its last checkpoint left it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from policy.model import Transformer
from prover.config import ProverConfig
from prover.rl.checkpointing import load_model
from prover.rl.corpus import load_corpus
from prover.rl.metrics import read_metrics
from prover.rl.packing import tokenize_example
from prover.rl.sft import run_sft
from tests.conftest import REPO_ROOT
from tests.rl.conftest import shortest_proofs


def _config(policy: Path, corpus: Path, **training: object) -> ProverConfig:
    return ProverConfig.model_validate({
        "policy": {"checkpoint": str(policy)},
        "sft": {"corpus": str(corpus), "eval_fraction": 0.0, "max_seq_len": 1024},
        "training": {"learning_rate": 1e-2, "warmup_steps": 2, "min_lr_ratio": 0.3, "micro_batch_size": 2,
                     "device": "cpu", "save_every": 1000, "eval_every": 1000} | training})


@torch.no_grad()
def _greedy(model: Transformer, prompt_ids: list[int], max_new: int, eos: int) -> list[int]:
    """Greedy decoding with the model's kv cache, up to EOS (included) or `max_new` tokens."""
    model.eval()
    out: list[int] = []
    with model.kv_cache(1, len(prompt_ids) + max_new):
        logits = model(torch.tensor([prompt_ids]))
        for _ in range(max_new):
            token = int(logits[0, -1].argmax())
            out.append(token)
            if token == eos:
                break
            logits = model(torch.tensor([[token]]), start_pos=len(prompt_ids) + len(out) - 1)
    return out


@pytest.mark.slow
def test_sft_reproduces_a_shown_proof_and_vllm_agrees(mini_policy: Path, tmp_path: Path) -> None:
    """Done-when: a tiny policy fine-tuned on a few shared proofs reproduces one verbatim under
    greedy decoding from its prompt, and its checkpoint gives the same greedy output in vLLM."""
    corpus = shortest_proofs(2, tmp_path)
    config = _config(mini_policy, corpus, steps=40)
    summary = run_sft(config, tmp_path / "run")
    checkpoint = Path(summary["checkpoint"])
    assert checkpoint.name == "step-00000040" and summary["examples"] == 2, summary

    from policy.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(checkpoint)
    examples, _ = load_corpus(corpus, "lean-files")
    model = load_model(checkpoint)
    assert isinstance(model, Transformer)
    reproduced = []
    for example in examples:
        seq = tokenize_example(tokenizer, example.prompt, example.completion)
        n_prompt = len(tokenizer(example.prompt)["input_ids"])
        expected = list(seq.tokens[n_prompt:])
        got = _greedy(model, list(seq.tokens[:n_prompt]), len(expected) + 4, tokenizer.eos_token_id)
        if got == expected:
            reproduced.append(example)
    assert reproduced, (f"no proof reproduced after {summary['steps']} steps (train loss {summary['train_loss']}); "
                        f"metrics: {[round(r['loss'], 3) for r in read_metrics(tmp_path / 'run' / 'metrics.jsonl')]}")

    from policy.config import PolicyConfig, SamplingConfig
    from policy.engines import make_engine
    from prover.checking import load_proofs, match_problems
    from prover.problems import load_problems
    from prover.prompts import candidate_from_output

    pytest.importorskip("vllm")
    target = reproduced[0]
    engine_config = PolicyConfig(checkpoint=str(checkpoint), engine="vllm", enforce_eager=True, max_model_len=1024,
                                 kv_cache_gib=1, dtype="float32")
    with make_engine(engine_config) as engine:
        result = engine.generate([target.prompt], SamplingConfig(temperature=0.0, max_tokens=512))[0]
    text = result.completions[0].text
    assert text == target.completion, f"vLLM greedy output differs:\n{text!r}\nexpected\n{target.completion!r}"
    entries = load_proofs(corpus)
    problem = match_problems(entries, load_problems("minif2f-valid"))[examples.index(target)]
    proof = entries[examples.index(target)].code
    candidate = candidate_from_output(problem, "deepseek-prover-v1.5", text)
    assert candidate == proof[proof.index(problem.formal_statement):].rstrip() + "\n", candidate


def _sft_command(config: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "prover.cli", "sft", "--config", str(config), "--out", str(out)]


@pytest.mark.slow
def test_sigkill_then_same_command_continues_without_repeating_a_step(mini_policy: Path, tmp_path: Path) -> None:
    """Done-when: SIGKILL `prover sft` mid-run, rerun the same command: the step counter and
    metrics.jsonl continue from the last checkpoint, no step repeated, none lost after it."""
    import tomli_w

    corpus = shortest_proofs(4, tmp_path)
    config = _config(mini_policy, corpus, steps=8, save_every=3, keep_last=2, learning_rate=1e-3)
    config_file = tmp_path / "sft.toml"
    config_file.write_text(tomli_w.dumps(config.model_dump(mode="json", exclude_none=True)), encoding="utf-8")
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    first = subprocess.Popen(_sft_command(config_file, out), cwd=REPO_ROOT, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:   # kill once step 4 is logged: one checkpoint (step 3) exists, step 4 is past it
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and first.poll() is None:
            if any(r["step"] >= 4 for r in read_metrics(out / "metrics.jsonl")):
                break
            time.sleep(0.05)
        assert first.poll() is None, first.communicate()
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
    finally:
        if first.poll() is None:
            first.kill()
    before = read_metrics(out / "metrics.jsonl")
    killed_at = max(r["step"] for r in before)
    assert killed_at >= 4, before
    assert (out / "checkpoints" / "step-00000003").is_dir(), sorted((out / "checkpoints").iterdir())

    second = subprocess.run(_sft_command(config_file, out), cwd=REPO_ROOT, env=env, capture_output=True,
                            text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    rows = [r for r in read_metrics(out / "metrics.jsonl") if "loss" in r]
    steps = [r["step"] for r in rows]
    assert steps == list(range(1, 9)), f"steps in metrics.jsonl after the rerun: {steps} (killed after {killed_at})"
    # Rows up to the checkpoint are the first run's own (kept), the rest the second run's.
    assert [r["time"] for r in rows[:3]] == [r["time"] for r in before if "loss" in r][:3], (rows[:3], before[:3])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 8 and summary["resumed_from"].endswith("step-00000003"), summary
    kept = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert kept == ["step-00000006", "step-00000008"], f"keep_last=2 should leave the two newest: {kept}"
    state = json.loads((out / "checkpoints" / "step-00000008" / "trainer" / "state.json").read_text())
    assert state["step"] == 8, state
