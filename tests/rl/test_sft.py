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


def _config(policy: Path, corpus: Path, mtp: bool = True, **training: object) -> ProverConfig:
    return ProverConfig.model_validate({
        "policy": {"checkpoint": str(policy)},
        "sft": {"corpus": str(corpus), "eval_fraction": 0.0, "max_seq_len": 1024, "mtp": mtp},
        "training": {"learning_rate": 3e-3, "warmup_steps": 5, "min_lr_ratio": 0.1, "micro_batch_size": 2,
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
    # 100 steps at 3e-3 take the loss to ~0.03 nats/token; MTP off halves the time (its loss
    # is exercised by the resume tests).
    config = _config(mini_policy, corpus, mtp=False, steps=100)
    summary = run_sft(config, tmp_path / "run")
    checkpoint = Path(summary["checkpoint"])
    assert checkpoint.name == "step-00000100" and summary["examples"] == 2, summary

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


@pytest.mark.slow
def test_any_hf_causal_lm_fine_tunes_and_saves_a_loadable_folder(tmp_path: Path) -> None:
    """A transformers model (Llama here) trains one example per row (packing is our policy's)
    and its checkpoints are its own save_pretrained folders."""
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    from policy.tokenizer import DEFAULT_TOKENIZER_DIR, load_tokenizer

    tokenizer = load_tokenizer(DEFAULT_TOKENIZER_DIR)
    torch.manual_seed(0)
    llama = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, max_position_embeddings=1024, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id))
    source = tmp_path / "llama"
    llama.save_pretrained(source)
    tokenizer.save_pretrained(source)
    corpus = shortest_proofs(3, tmp_path)
    config = _config(source, corpus, steps=3, learning_rate=1e-2, warmup_steps=0)
    summary = run_sft(config, tmp_path / "run")
    losses = [r["loss"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl")]
    assert summary["packed"] is False and len(losses) == 3 and losses[-1] < losses[0], (summary, losses)
    reloaded = AutoModelForCausalLM.from_pretrained(summary["checkpoint"])
    assert reloaded.config.model_type == "llama"


@pytest.mark.slow
def test_interrupted_then_resumed_run_matches_an_uninterrupted_one(mini_policy: Path, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C after step 2 writes a checkpoint; the same config run again continues from it and
    ends with the weights and losses of a run that never stopped (weights, AdamW moments,
    schedule, RNG and data cursor all restored)."""
    from safetensors.torch import load_file

    from prover.rl.metrics import StepProgress
    from prover.rl.sft import SFTInterrupted

    corpus = shortest_proofs(3, tmp_path)
    config = _config(mini_policy, corpus, steps=4, micro_batch_size=1, save_every=10, learning_rate=1e-3, warmup_steps=2,
                     gradient_accumulation=2)
    straight = run_sft(config, tmp_path / "straight")
    original_step = StepProgress.step

    def ctrl_c_after_two(self: StepProgress, **latest: float) -> None:
        original_step(self, **latest)
        if self.done == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(StepProgress, "step", ctrl_c_after_two)
    with pytest.raises(SFTInterrupted) as stopped:
        run_sft(config, tmp_path / "halves")
    assert stopped.value.step == 2 and stopped.value.checkpoint.name == "step-00000002", stopped.value
    monkeypatch.setattr(StepProgress, "step", original_step)
    resumed = run_sft(config, tmp_path / "halves")
    assert resumed["resumed_from"].endswith("step-00000002"), resumed
    ours = load_file(str(Path(resumed["checkpoint"]) / "model.safetensors"))
    reference = load_file(str(Path(straight["checkpoint"]) / "model.safetensors"))
    worst = max(float((ours[k] - reference[k]).abs().max()) for k in reference)
    assert worst == 0.0, f"resumed weights differ from the uninterrupted run's by up to {worst}"
    losses = [(r["step"], r["loss"]) for r in read_metrics(tmp_path / "halves" / "metrics.jsonl")]
    assert losses == [(r["step"], r["loss"]) for r in read_metrics(tmp_path / "straight" / "metrics.jsonl")], losses


def test_cli_mistakes_are_one_line_and_exit_2(mini_policy: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from prover.cli import app

    runner = CliRunner()
    cases = [
        (["sft", "--out", str(tmp_path / "a")], "no model to fine-tune"),
        (["sft", "--model", str(mini_policy), "--out", str(tmp_path / "b")], "sft.corpus: no corpus given"),
        (["sft", "--model", str(mini_policy), "--corpus", str(tmp_path / "none.jsonl"), "--out", str(tmp_path / "c")],
         "none.jsonl: corpus file not found"),
        (["sft", "--model", str(mini_policy), "--format", "words", "--out", str(tmp_path / "d")], "sft.format"),
    ]
    for args, expected in cases:
        result = runner.invoke(app, args)
        assert result.exit_code == 2 and expected in result.output, (args, result.exit_code, result.output)
        assert "Traceback" not in result.output, result.output
