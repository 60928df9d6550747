"""Generation engines: the transformers engine on a tiny Llama (fast tier), and vLLM against
transformers on a `prover model init --preset tiny` checkpoint (slow tier, one shared engine each).

Random models put nearly uniform mass on every token, where greedy choices flip on rounding
noise; the comparisons therefore load "peaked" weights (the output head scaled up), whose
top tokens are far apart.
"""

from __future__ import annotations

import dataclasses
import math
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from policy.config import PolicyConfig, SamplingConfig
from policy.engines import Completion, GenerationEngine, PromptResult, make_engine
from policy.tokenizer import DEFAULT_TOKENIZER_DIR, load_tokenizer

PROMPTS = [
    "theorem foo (n : ℕ) (h₀ : n ≠ 0) : n + 0 = n := by\n",
    "example : (1 : ℤ) + 1 = 2 := by",
    "theorem mathd_algebra_10 (a b : ℝ) (h₀ : a = 2 * b) (h₁ : b = 3) :\n  a = 6 := by\n  ",
]
GREEDY = SamplingConfig(temperature=0.0, max_tokens=16)


def _check_shapes(results: list[PromptResult], prompts: list[str], n: int, bos_id: int) -> None:
    assert [r.prompt for r in results] == prompts
    for r in results:
        assert r.prompt_token_ids[0] == bos_id, f"prompt ids must start with bos: {r.prompt_token_ids[:4]}"
        assert len(r.completions) == n, f"{len(r.completions)} completions, want {n}"
        for c in r.completions:
            assert isinstance(c, Completion)
            assert len(c.token_ids) == len(c.logprobs) > 0, (len(c.token_ids), len(c.logprobs))
            bad = [lp for lp in c.logprobs if not (math.isfinite(lp) and lp <= 0.0)]
            assert not bad, f"logprobs must be finite and <= 0: {bad}"
            assert c.finish_reason in ("stop", "length"), c.finish_reason


def _peaked(state: dict[str, torch.Tensor], head: str, scale: float) -> dict[str, torch.Tensor]:
    return {k: v * scale if k == head else v for k, v in state.items()}


# --------------------------------------------------------------------------- fast tier:
# transformers engine on a 2-layer Llama with our tokenizer (loads in under a second).


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = load_tokenizer(DEFAULT_TOKENIZER_DIR)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        model.lm_head.weight.mul_(30.0)  # peaked next-token distributions (see module docstring)
    folder = tmp_path_factory.mktemp("llama")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def hf_llama(llama_dir: Path):
    with make_engine(PolicyConfig(checkpoint=str(llama_dir), engine="transformers", max_model_len=256)) as engine:
        yield engine


def test_hf_shapes_and_n(hf_llama) -> None:
    results = hf_llama.generate(PROMPTS[:2], SamplingConfig(n=3, temperature=1.0, max_tokens=8, seed=1))
    _check_shapes(results, PROMPTS[:2], n=3, bos_id=hf_llama.tokenizer.bos_token_id)


def test_hf_logprobs_are_raw_logprobs_of_sampled_tokens(hf_llama) -> None:
    """Sampling at temperature 0.7 / top-p 0.9 still reports log p under the model's own
    distribution: recomputed here with one forward pass over prompt + completion."""
    results = hf_llama.generate(PROMPTS[:2], SamplingConfig(n=2, temperature=0.7, top_p=0.9, max_tokens=10, seed=3))
    for r in results:
        for c in r.completions:
            ids = torch.tensor([r.prompt_token_ids + c.token_ids])
            with torch.no_grad():
                logits = hf_llama.model(ids).logits[0].float()
            start = len(r.prompt_token_ids) - 1  # logits at t predict token t+1
            steps = torch.log_softmax(logits[start : start + len(c.token_ids)], dim=-1)
            expected = steps.gather(1, torch.tensor(c.token_ids)[:, None]).squeeze(1)
            got = torch.tensor(c.logprobs)
            assert torch.allclose(got, expected, atol=1e-4), f"engine {got.tolist()} vs forward {expected.tolist()}"


def test_hf_batched_greedy_equals_one_prompt_at_a_time(hf_llama) -> None:
    batched = hf_llama.generate(PROMPTS, GREEDY)
    for prompt, together in zip(PROMPTS, batched, strict=True):
        alone = hf_llama.generate([prompt], GREEDY)[0]
        assert together.completions[0].token_ids == alone.completions[0].token_ids, (
            f"left padding changed the output for {prompt!r}: "
            f"{together.completions[0].token_ids} vs {alone.completions[0].token_ids}"
        )


def test_hf_seed_reproduces_across_chunks(llama_dir: Path) -> None:
    # hf_batch_size=3 splits 2 prompts x 4 samples into chunks of 3, 3 and 2 rows.
    config = PolicyConfig(checkpoint=str(llama_dir), engine="transformers", hf_batch_size=3, max_model_len=256)
    sampling = SamplingConfig(n=4, temperature=1.0, max_tokens=8, seed=7)
    with make_engine(config) as engine:
        first = engine.generate(PROMPTS[:2], sampling)
        again = engine.generate(PROMPTS[:2], sampling)
        other = engine.generate(PROMPTS[:2], sampling.model_copy(update={"seed": 8}))
    ids = [[c.token_ids for c in r.completions] for r in first]
    assert ids == [[c.token_ids for c in r.completions] for r in again], "same seed, different samples"
    assert ids != [[c.token_ids for c in r.completions] for r in other], "seed 7 and 8 gave the same samples"
    assert all(len(set(row)) > 1 for row in ids), f"the n samples of a prompt should differ: {ids}"


def test_hf_generate_iter_hands_each_prompt_on_after_its_last_chunk(llama_dir: Path) -> None:
    """3 prompts x n=2 in chunks of 3 rows ([p0 p0 p1], [p1 p2 p2]): prompt 0 is complete after
    the first chunk and comes out before the second is generated; the results are `generate`'s."""
    config = PolicyConfig(checkpoint=str(llama_dir), engine="transformers", hf_batch_size=3, max_model_len=256)
    sampling = SamplingConfig(n=2, temperature=1.0, max_tokens=6, seed=4)
    with make_engine(config) as engine:
        chunks = 0
        generate_rows = engine._generate_rows  # type: ignore[attr-defined]

        def counted(*args, **kwargs):  # type: ignore[no-untyped-def]
            nonlocal chunks
            chunks += 1
            return generate_rows(*args, **kwargs)

        engine._generate_rows = counted  # type: ignore[attr-defined]
        seen = [(i, chunks) for i, _ in engine.generate_iter(PROMPTS, sampling)]
        assert seen == [(0, 1), (1, 2), (2, 2)], f"(prompt, chunks generated when it came out): {seen}"
        streamed = [r for _, r in engine.generate_iter(PROMPTS, sampling)]
        assert streamed == engine.generate(PROMPTS, sampling), "generate_iter and generate disagree"


def test_hf_stop_string_cuts_text_keeps_tokens(hf_llama) -> None:
    full = hf_llama.generate(PROMPTS[:1], GREEDY)[0].completions[0]
    stop = hf_llama.tokenizer.decode(full.token_ids[4:6])
    assert stop.strip() and stop in full.text, (stop, full.text)
    cut = hf_llama.generate(PROMPTS[:1], GREEDY.model_copy(update={"stop": [stop]}))[0].completions[0]
    assert cut.finish_reason == "stop", cut
    assert cut.text == full.text[: full.text.find(stop)], (cut.text, full.text, stop)
    assert full.token_ids[: len(cut.token_ids)] == cut.token_ids, (cut.token_ids, full.token_ids)
    assert stop in hf_llama.tokenizer.decode(cut.token_ids), "the stop string's tokens are kept"
    assert stop not in hf_llama.tokenizer.decode(cut.token_ids[:-1]), "no token past the stop string"


def test_hf_load_weights_state_dict_and_folder(hf_llama, llama_dir: Path) -> None:
    eos = hf_llama.tokenizer.eos_token_id
    before = hf_llama.generate(PROMPTS[:1], GREEDY)[0].completions[0]
    state = {k: v.clone() for k, v in hf_llama.model.state_dict().items()}
    # eos's head row becomes twice the row of the first greedy token, whose (positive, top)
    # logit it thereby doubles: eos is now the greedy first token.
    state["lm_head.weight"][eos] = 2.0 * state["lm_head.weight"][before.token_ids[0]]
    hf_llama.load_weights(state)
    stopped = hf_llama.generate(PROMPTS[:1], GREEDY)[0].completions[0]
    assert (stopped.token_ids, stopped.text, stopped.finish_reason) == ((eos,), "", "stop"), stopped
    hf_llama.load_weights(llama_dir)
    after = hf_llama.generate(PROMPTS[:1], GREEDY)[0].completions[0]
    assert after.token_ids == before.token_ids, (after.token_ids, before.token_ids)


def test_hf_context_length_caps_completion(llama_dir: Path) -> None:
    prompt = "".join(PROMPTS) * 2  # > 64 tokens, the smallest max_model_len allowed
    prompt_len = len(load_tokenizer(llama_dir)(prompt)["input_ids"])
    config = PolicyConfig(checkpoint=str(llama_dir), engine="transformers", max_model_len=prompt_len + 3)
    with make_engine(config) as engine:
        c = engine.generate([prompt], GREEDY)[0].completions[0]
        assert (len(c.token_ids), c.finish_reason) == (3, "length"), c
        with pytest.raises(ValueError, match="leaves no room"):
            engine.generate([prompt + PROMPTS[0]], GREEDY)


def test_hf_context_longer_than_the_model_is_refused(llama_dir: Path) -> None:
    config = PolicyConfig(checkpoint=str(llama_dir), engine="transformers", max_model_len=512)
    with pytest.raises(ValueError) as info:
        make_engine(config)
    assert "max_model_len=512 exceeds" in str(info.value) and "max_position_embeddings=256" in str(info.value), str(info.value)


def test_make_engine_needs_a_checkpoint() -> None:
    with pytest.raises(ValueError, match="checkpoint is not set"):
        make_engine(PolicyConfig(engine="transformers"))


# --------------------------------------------------------------------------- slow tier:
# vLLM (CPU) and transformers on our DeepSeek-V3 tiny preset, as `prover model init` writes it.


@pytest.fixture(scope="module")
def init_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from typer.testing import CliRunner

    from prover.cli import app

    folder = tmp_path_factory.mktemp("tiny") / "ckpt"
    result = CliRunner().invoke(app, ["model", "init", "--preset", "tiny", "--out", str(folder), "--seed", "0"])
    assert result.exit_code == 0, result.output
    return folder


@pytest.fixture(scope="module")
def init_state(init_dir: Path) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors under DeepSeek's names (what a learner pushes)."""
    return load_file(str(init_dir / "model.safetensors"))


@pytest.fixture(scope="module")
def peaked_state(init_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return _peaked(init_state, "lm_head.weight", 40.0)


@pytest.fixture(scope="module")
def vllm_engine(init_dir: Path):
    pytest.importorskip("vllm")
    config = PolicyConfig(checkpoint=str(init_dir), engine="vllm", enforce_eager=True, max_model_len=512, kv_cache_gib=1)
    with make_engine(config) as engine:
        yield engine


@pytest.fixture(scope="module")
def hf_deepseek(init_dir: Path):
    with make_engine(PolicyConfig(checkpoint=str(init_dir), engine="transformers", max_model_len=512)) as engine:
        yield engine


@pytest.mark.slow
def test_init_checkpoint_generates_in_transformers_and_vllm(init_dir: Path, init_state, vllm_engine) -> None:
    """Done-when: `prover model init --preset tiny` loads and generates in both stacks."""
    from transformers import AutoModelForCausalLM

    tokenizer = load_tokenizer(init_dir)
    model = AutoModelForCausalLM.from_pretrained(init_dir, dtype=torch.float32)
    ids = tokenizer(PROMPTS[0], return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=5, do_sample=False)
    assert out.shape == (1, ids["input_ids"].shape[1] + 5), out.shape

    vllm_engine.load_weights(init_state)
    results = vllm_engine.generate(PROMPTS, SamplingConfig(n=2, temperature=1.0, max_tokens=8, seed=0))
    _check_shapes(results, PROMPTS, n=2, bos_id=tokenizer.bos_token_id)
    # One seed for a batch: each prompt still gets its own noise (vllm-project/vllm#50440 gives a
    # broadcast seed to every prompt), so the same prompt twice in one call samples differently,
    # and the call repeats exactly.
    sampling = SamplingConfig(n=2, temperature=1.0, max_tokens=8, seed=0)
    twice = vllm_engine.generate([PROMPTS[0], PROMPTS[0]], sampling)
    first, second = ([c.token_ids for c in r.completions] for r in twice)
    assert first != second, f"one prompt twice in a seeded batch sampled the same completions: {first}"
    again = vllm_engine.generate([PROMPTS[0], PROMPTS[0]], sampling)
    assert [[c.token_ids for c in r.completions] for r in again] == [first, second], "a seeded call repeats"


@pytest.mark.slow
@pytest.mark.parametrize("engine_name", ["vllm_engine", "hf_deepseek"])
def test_shapes_n_and_stop(engine_name: str, peaked_state, request: pytest.FixtureRequest) -> None:
    engine: GenerationEngine = request.getfixturevalue(engine_name)
    engine.load_weights(peaked_state)
    results = engine.generate(PROMPTS, SamplingConfig(n=3, temperature=1.0, max_tokens=12, seed=5))
    _check_shapes(results, PROMPTS, n=3, bos_id=0)
    full = engine.generate(PROMPTS[:1], GREEDY)[0].completions[0]
    stop = full.text[len(full.text) // 2 : len(full.text) // 2 + 2]
    assert stop.strip(), f"pick a visible stop string from {full.text!r}"
    cut = engine.generate(PROMPTS[:1], GREEDY.model_copy(update={"stop": [stop]}))[0].completions[0]
    assert (cut.text, cut.finish_reason) == (full.text[: full.text.find(stop)], "stop"), (cut, full.text, stop)


@pytest.mark.slow
@pytest.mark.parametrize("engine_name", ["vllm_engine", "hf_deepseek"])
def test_token_id_prompts_continue_from_exactly_those_tokens(
    engine_name: str, peaked_state, request: pytest.FixtureRequest
) -> None:
    """A token-id prompt is used as given (no bos added, no re-tokenisation): text prompt ids +
    their greedy completion's first 3 tokens, fed back as ids, continue with the rest."""
    engine: GenerationEngine = request.getfixturevalue(engine_name)
    engine.load_weights(peaked_state)
    full = engine.generate(PROMPTS[:2], GREEDY)
    prefixes = [r.prompt_token_ids + r.completions[0].token_ids[:3] for r in full]
    resumed = engine.generate(prefixes, GREEDY.model_copy(update={"max_tokens": GREEDY.max_tokens - 3}))
    for whole, prefix, again in zip(full, prefixes, resumed, strict=True):
        assert again.prompt == "" and again.prompt_token_ids == prefix, (again.prompt, again.prompt_token_ids, prefix)
        rest, got = whole.completions[0].token_ids[3:], again.completions[0].token_ids
        assert got == rest, f"continuation from ids {got} != the rest of the one-call completion {rest}"
        worst = max(abs(a - b) for a, b in zip(again.completions[0].logprobs, whole.completions[0].logprobs[3:], strict=True))
        assert worst < 1e-4, f"logprobs of the same tokens differ by {worst:.2e}"


@pytest.mark.slow
def test_greedy_vllm_agrees_with_transformers(vllm_engine, hf_deepseek, peaked_state) -> None:
    vllm_engine.load_weights(peaked_state)
    hf_deepseek.load_weights(peaked_state)
    ours = vllm_engine.generate(PROMPTS, GREEDY)
    reference = hf_deepseek.generate(PROMPTS, GREEDY)
    for v, h in zip(ours, reference, strict=True):
        assert v.prompt_token_ids == h.prompt_token_ids, (v.prompt_token_ids, h.prompt_token_ids)
        vc, hc = v.completions[0], h.completions[0]
        assert vc.token_ids == hc.token_ids, f"vLLM {vc.token_ids}\nHF   {hc.token_ids}"
        worst = max(abs(a - b) for a, b in zip(vc.logprobs, hc.logprobs, strict=True))
        assert worst < 1e-3, f"logprobs differ by {worst:.2e}: {vc.logprobs} vs {hc.logprobs}"


@pytest.mark.slow  # importing vLLM alone takes seconds
def test_vllm_missing_logprob_is_an_error_not_a_shorter_tuple() -> None:
    pytest.importorskip("vllm")
    from vllm.logprobs import Logprob

    from policy.engines.vllm_engine import _sampled_token_logprobs

    steps = [{5: Logprob(-0.5), 6: Logprob(-2.0)}, {7: Logprob(-1.25)}]
    got = _sampled_token_logprobs([5, 7], steps)
    assert got == (-0.5, -1.25), got
    with pytest.raises(RuntimeError, match="no logprob for sampled token 9 at position 1"):
        _sampled_token_logprobs([5, 9], steps)
    with pytest.raises(RuntimeError, match="returned none logprob positions for 2 sampled tokens"):
        _sampled_token_logprobs([5, 7], None)
    with pytest.raises(RuntimeError, match="returned 2 logprob positions for 3 sampled tokens"):
        _sampled_token_logprobs([5, 7, 8], steps)


@pytest.mark.slow
def test_vllm_logprobs_are_raw_logprobs_of_sampled_tokens(
    vllm_engine, init_dir: Path, init_state, tmp_path: Path
) -> None:
    """Sampling at temperature 0.7 / top-p 0.9, vLLM still reports log p of each sampled token
    under the model's own distribution (raw logits, temperature 1, before top-p): the value a
    GRPO learner recomputes with our `Transformer`, here one forward pass over prompt +
    completion of the same weights."""
    from policy.checkpoint import load_pretrained

    # A head scaled 8x: peaked enough that temperature 0.7 visibly changes the logprobs (checked
    # below, so the comparison can tell raw from processed), flat enough that top-p leaves
    # several candidates to sample from.
    folder = tmp_path / "moderate"
    shutil.copytree(init_dir, folder)
    state = _peaked(init_state, "lm_head.weight", 8.0)
    save_file({k: v.contiguous() for k, v in state.items()}, str(folder / "model.safetensors"))
    vllm_engine.load_weights(folder)
    model = load_pretrained(folder, dtype=torch.float32).eval()
    sampling = SamplingConfig(n=4, temperature=0.7, top_p=0.9, max_tokens=12, seed=11)
    worst, tempered_gap, tokens = 0.0, 0.0, 0
    for r in vllm_engine.generate(PROMPTS, sampling):
        for c in r.completions:
            with torch.no_grad():
                logits = model(torch.tensor([r.prompt_token_ids + c.token_ids]))[0].float()
            start = len(r.prompt_token_ids) - 1  # logits at t predict token t+1
            steps = logits[start : start + len(c.token_ids)]
            chosen = torch.tensor(c.token_ids)[:, None]
            raw = torch.log_softmax(steps, dim=-1).gather(1, chosen).squeeze(1)
            tempered = torch.log_softmax(steps / sampling.temperature, dim=-1).gather(1, chosen).squeeze(1)
            got = torch.tensor(c.logprobs)
            assert torch.allclose(got, raw, atol=1e-3), f"vLLM {got.tolist()}\nforward {raw.tolist()}"
            worst = max(worst, float((got - raw).abs().max()))
            tempered_gap = max(tempered_gap, float((tempered - raw).abs().max()))
            tokens += len(c.token_ids)
    assert tokens > 0, "no token sampled"
    assert tempered_gap > 0.05, (
        f"temperature changes no logprob by more than {tempered_gap:.3g}: the weights cannot tell "
        f"raw from processed logprobs (largest vLLM-forward difference {worst:.2e})"
    )


@pytest.mark.slow
def test_vllm_load_weights_changes_and_restores_outputs(
    vllm_engine, hf_deepseek, peaked_state, init_dir: Path, tmp_path: Path
) -> None:
    def greedy(engine: GenerationEngine) -> list[tuple[int, ...]]:
        return [r.completions[0].token_ids for r in engine.generate(PROMPTS, GREEDY)]

    vllm_engine.load_weights(peaked_state)
    original = greedy(vllm_engine)
    # Negate every routed expert: vLLM's CPU MoE kernel prepacks these, so a reload must
    # redo the packing; transformers on the same weights is the reference.
    perturbed = {k: (-v if ".mlp.experts." in k else v) for k, v in peaked_state.items()}
    vllm_engine.load_weights(perturbed)
    hf_deepseek.load_weights(perturbed)
    changed = greedy(vllm_engine)
    assert changed != original, f"outputs unchanged after loading perturbed weights: {changed}"
    assert changed == greedy(hf_deepseek), "vLLM after reload disagrees with transformers on the same weights"
    # Back to the originals, this time from a checkpoint folder.
    folder = tmp_path / "peaked"
    shutil.copytree(init_dir, folder)
    save_file({k: v.contiguous() for k, v in peaked_state.items()}, str(folder / "model.safetensors"))
    vllm_engine.load_weights(folder)
    restored = greedy(vllm_engine)
    assert restored == original, f"reloading the original weights did not restore outputs:\n{restored}\n{original}"


def _without_logprobs(result: PromptResult) -> PromptResult:
    return dataclasses.replace(result, completions=tuple(dataclasses.replace(c, logprobs=()) for c in result.completions))


@pytest.mark.slow
def test_vllm_generate_iter_gives_generates_results(vllm_engine, peaked_state) -> None:
    """Seeded sampling, n=2, text and token-id prompts: `generate_iter`'s results, put back in
    prompt order, are `generate`'s (same requests, same per-prompt seeds, same result shape)."""
    vllm_engine.load_weights(peaked_state)
    ids = list(vllm_engine.generate(PROMPTS[:1], GREEDY)[0].prompt_token_ids)
    prompts = [*PROMPTS, ids]
    sampling = SamplingConfig(n=2, temperature=1.0, max_tokens=12, seed=3)
    whole = vllm_engine.generate(prompts, sampling)
    streamed = list(vllm_engine.generate_iter(prompts, sampling))
    assert sorted(i for i, _ in streamed) == list(range(len(prompts))), [i for i, _ in streamed]
    in_order = [r for _, r in sorted(streamed, key=lambda item: item[0])]
    for got, want in zip(in_order, whole, strict=True):
        # The tokens are the same; a logprob may differ in its last float32 digits, because the two
        # calls batch the requests differently (seen: 1.2e-7 apart on a clean CI clone).
        assert _without_logprobs(got) == _without_logprobs(want), f"generate_iter {got}\n!= generate {want}"
        for a, b in zip(got.completions, want.completions, strict=True):
            assert a.logprobs == pytest.approx(b.logprobs, abs=1e-4), (a.logprobs, b.logprobs)
    assert whole[-1].prompt == "" and list(whole[-1].prompt_token_ids) == ids, whole[-1]


@pytest.mark.slow
def test_vllm_generate_iter_hands_on_a_finished_prompt_while_others_run(vllm_engine, peaked_state) -> None:
    """Greedy, one call of two prompts: a stop string that prompt `a`'s answer meets early and
    prompt `b`'s never does. `a` (given second) comes out first, while `b` is still running."""
    vllm_engine.load_weights(peaked_state)
    long = GREEDY.model_copy(update={"max_tokens": 32})
    texts = [r.completions[0] for r in vllm_engine.generate(PROMPTS, long)]
    pick = next(((a, b, texts[a].text[pos:pos + 2]) for a in range(len(PROMPTS)) for b in range(len(PROMPTS))
                 if a != b and texts[b].finish_reason == "length"
                 for pos in range(1, len(texts[a].text) // 3)
                 if texts[a].text[pos:pos + 2].strip() and texts[a].text[pos:pos + 2] not in texts[b].text), None)
    assert pick is not None, f"no stop string separates the greedy answers {[t.text for t in texts]}"
    a, b, stop = pick
    order, running = [], []
    for i, result in vllm_engine.generate_iter([PROMPTS[b], PROMPTS[a]], long.model_copy(update={"stop": [stop]})):
        order.append((i, result.completions[0].finish_reason))
        running.append(vllm_engine.llm.llm_engine.has_unfinished_requests())
    assert order == [(1, "stop"), (0, "length")], f"stop {stop!r}: (index, finish) in arrival order {order}"
    assert running == [True, False], f"was the long prompt still running when the short one came out? {running}"


@pytest.mark.slow
def test_vllm_generate_iter_closed_early_leaves_nothing_running(vllm_engine, peaked_state) -> None:
    vllm_engine.load_weights(peaked_state)
    sampling = SamplingConfig(n=2, temperature=1.0, max_tokens=24, seed=1)
    stream = vllm_engine.generate_iter(PROMPTS, sampling)
    next(stream)
    stream.close()
    assert not vllm_engine.llm.llm_engine.has_unfinished_requests(), "closing the stream left requests running"
    again = vllm_engine.generate(PROMPTS, sampling)
    assert [len(r.completions) for r in again] == [2, 2, 2], again


def _eos_always(state: dict[str, torch.Tensor], eos_id: int) -> dict[str, torch.Tensor]:
    """Weights under which end-of-sequence is nearly certain at every position: a large
    constant component in every embedding keeps one residual coordinate positive through the
    layers, and only the eos row of the head reads it (logit ~ 10 * sqrt(dim) vs 0)."""
    state = dict(state)
    embed = state["model.embed_tokens.weight"].clone()
    embed[:, 0] += 1000.0
    head = torch.zeros_like(state["lm_head.weight"])
    head[eos_id, 0] = 10.0
    state["model.embed_tokens.weight"], state["lm_head.weight"] = embed, head
    return state


@pytest.mark.slow
@pytest.mark.parametrize("engine_name", ["vllm_engine", "hf_deepseek"])
def test_ignore_eos_samples_to_max_tokens(
    engine_name: str, init_dir: Path, init_state, request: pytest.FixtureRequest
) -> None:
    engine: GenerationEngine = request.getfixturevalue(engine_name)
    eos = load_tokenizer(init_dir).eos_token_id
    engine.load_weights(_eos_always(init_state, eos))
    sampling = SamplingConfig(n=2, temperature=1.0, max_tokens=6, seed=0)
    ended = [c for r in engine.generate(PROMPTS[:2], sampling) for c in r.completions]
    assert [(c.token_ids, c.finish_reason, c.text) for c in ended] == [((eos,), "stop", "")] * 4, ended
    kept = [
        c
        for r in engine.generate(PROMPTS[:2], sampling.model_copy(update={"ignore_eos": True}))
        for c in r.completions
    ]
    assert [(c.token_ids, c.finish_reason) for c in kept] == [((eos,) * 6, "length")] * 4, kept
    assert all(len(c.logprobs) == 6 for c in kept), [c.logprobs for c in kept]


@pytest.fixture(scope="module")
def llama64_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Llama with head dim 64 (vLLM's CPU attention takes 64, not the fast tier's 16): the
    stand-in for a user's own HF causal LM, e.g. a released Llama-architecture prover."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = load_tokenizer(DEFAULT_TOKENIZER_DIR)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        model.lm_head.weight.mul_(30.0)
    folder = tmp_path_factory.mktemp("llama64")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.mark.slow
def test_vllm_runs_any_hf_causal_lm_like_transformers(llama64_dir: Path) -> None:
    """The default engine on a model that is not ours: greedy tokens and logprobs agree with
    the transformers engine, and a weight reload takes effect."""
    pytest.importorskip("vllm")
    common = {"checkpoint": str(llama64_dir), "max_model_len": 512}
    with make_engine(PolicyConfig(engine="transformers", **common)) as hf:
        reference = hf.generate(PROMPTS, GREEDY)
    config = PolicyConfig(engine="vllm", enforce_eager=True, kv_cache_gib=1, **common)
    with make_engine(config) as engine:
        ours = engine.generate(PROMPTS, GREEDY)
        for v, h in zip(ours, reference, strict=True):
            vc, hc = v.completions[0], h.completions[0]
            assert vc.token_ids == hc.token_ids, f"vLLM {vc.token_ids}\nHF   {hc.token_ids}"
            worst = max(abs(a - b) for a, b in zip(vc.logprobs, hc.logprobs, strict=True))
            assert worst < 1e-3, f"logprobs differ by {worst:.2e}"
        state = load_file(str(llama64_dir / "model.safetensors"))
        engine.load_weights({k: -v if k == "lm_head.weight" else v for k, v in state.items()})
        flipped = engine.generate(PROMPTS, GREEDY)
    assert [r.completions[0].token_ids for r in flipped] != [
        r.completions[0].token_ids for r in ours
    ], "loading negated head weights did not change the outputs"
