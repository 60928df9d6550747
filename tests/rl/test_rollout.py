"""Rollouts (prover/rl/rollout.py): whole-proof and tactic-by-tactic episodes on the stand-in REPL.

The tactic tree is tests/lean_env/rules/tactic_tree.json (see tests/test_best_first.py): from
the root `⊢ b = a`, `symm` leads to `a = b`, where `exact h` finishes; `dive1` -> `dive 1`,
`dive2` -> `dive 2`; anything else is an error. A scripted engine reads the goal from the token
ids it is fed (decoded) and proposes tactics as token ids with chosen logprobs; the tiny
policy (a random `model init --preset tiny` checkpoint) proposes noise, which the tree's
catch-all rejects, so its dialogues run to the turn budget.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from lean_env.config import VerifierConfig
from lean_env.verifier import Verifier
from policy.config import SamplingConfig
from policy.engines import Completion, Prompt, PromptResult
from policy.tokenizer import DEFAULT_TOKENIZER_DIR, load_tokenizer
from prover.config import GRPOConfig
from prover.problems import Problem
from prover.rl.episodes import Episode
from prover.rl.rewards import lean_reward
from prover.rl.rollout import (
    ERROR_MARK,
    TacticBudget,
    judge_whole,
    repl_sessions,
    sample_whole,
    tactic_episodes,
    whole_proof_episodes,
)

RULES = Path(__file__).resolve().parents[1] / "lean_env" / "rules" / "tactic_tree.json"
HEADER = "import Mathlib\nimport Aesop\n\nset_option maxHeartbeats 400000\n\nopen BigOperators Real Nat\n\n"
A = "a b : ℕ\nh : a = b\n⊢ a = b"
# goal -> tactics proposed for it, in order, one per sample asked (the counter persists)
SCRIPT = {"⊢ b = a": ["symm", "bogus", "dive1"], A: ["exact h"], "⊢ dive 1": ["dive2"], "⊢ dive 2": ["dive3"]}
LOGPROB = -0.25
TOKENIZER = load_tokenizer(DEFAULT_TOKENIZER_DIR)
SCORE = lean_reward(GRPOConfig(), max_tokens=256)   # accepted 1, rejected 0, not checked excluded


def problem(name: str = "tree", statement: str = "(a b : ℕ) (h : a = b) : b = a") -> Problem:
    return Problem(name=name, split="test", header=HEADER, id=name, formal_statement=f"theorem {name} {statement} := by\n")


class TokenScriptEngine:
    """Token-in/token-out engine: decodes what it is fed, proposes SCRIPT's next tactic for the
    last `[GOAL]...[PROOFSTEP]` in it, as token ids (tactic + newline, the gptf stop)."""

    def __init__(self) -> None:
        self.fed: list[tuple[int, ...]] = []
        self.asked: dict[str, int] = {}

    def generate(self, prompts: Sequence[Prompt], sampling: SamplingConfig) -> list[PromptResult]:
        out = []
        for prompt in prompts:
            assert not isinstance(prompt, str), f"tactic turns must be fed token ids, got text {prompt!r}"
            self.fed.append(tuple(prompt))
            text = TOKENIZER.decode(list(prompt), skip_special_tokens=True)
            goal = text.rsplit("[GOAL]", 1)[1].removesuffix("[PROOFSTEP]")
            completions = []
            for _ in range(sampling.n):
                proposals = SCRIPT.get(goal, ["nothing"])
                k = self.asked.get(goal, 0)
                self.asked[goal] = k + 1
                ids = tuple(TOKENIZER(proposals[k % len(proposals)] + "\n", add_special_tokens=False)["input_ids"])
                completions.append(Completion(proposals[k % len(proposals)] + "\n", ids, (LOGPROB,) * len(ids), "stop"))
            out.append(PromptResult("", tuple(prompt), tuple(completions)))
        return out


@pytest.fixture(scope="module")
def verifier() -> Any:
    with Verifier(VerifierConfig(backend="standin", standin_rules=RULES, workers=2, timeout_s=20,
                                 tactic_timeout_s=10)) as v:
        yield v


def turn_starts(e: Episode) -> list[int]:
    """Completion positions where the policy's turn begins (an env token, or the start, before it)."""
    mask = e.loss_mask
    return [i for i in range(len(mask)) if mask[i] and (i == 0 or not mask[i - 1])]


def assert_exact_prefixes(episodes: Sequence[Episode], fed: Sequence[tuple[int, ...]]) -> None:
    """Every turn of every episode was fed to the engine as exactly prompt_ids + completion_ids[:start]."""
    fed_set = set(fed)
    for e in episodes:
        for start in turn_starts(e):
            prefix = e.prompt_ids + e.completion_ids[:start]
            assert prefix in fed_set, f"{e.problem_id}: turn at {start} was not fed as such: {TOKENIZER.decode(prefix)!r}"


def test_tactic_episodes_token_in_token_out(verifier: Verifier) -> None:
    engine = TokenScriptEngine()
    episodes = tactic_episodes([problem()], engine, repl_sessions(verifier), TOKENIZER,  # type: ignore[arg-type]
                               SamplingConfig(n=2, max_tokens=16), budget=TacticBudget(turns=3, max_tokens=512),
                               verifier=verifier, score=SCORE)
    assert [(e.group, e.reward, e.outcome) for e in episodes] == [(0, 1.0, "accepted"), (0, 0.0, "rejected:incomplete")], episodes
    proved, stuck = episodes
    # the root prompt (with bos) is shared; the two samples of it went out as one prompt, n=2
    assert proved.prompt_ids == stuck.prompt_ids == engine.fed[0], (proved.prompt_ids, engine.fed[0])
    assert proved.prompt_ids[0] == TOKENIZER.bos_token_id
    assert_exact_prefixes(episodes, engine.fed)
    # proved: symm (sampled), new goals (env), exact h (sampled) -- and nothing after the proof
    text = TOKENIZER.decode(list(proved.completion_ids))
    assert text == f"symm\n[GOAL]{A}[PROOFSTEP]exact h\n", repr(text)
    # stuck: bogus -> Lean's error + the same goals, dive1 -> dive 1, dive2 -> dive 2 (3 turns)
    stuck_text = TOKENIZER.decode(list(stuck.completion_ids))
    assert stuck_text.startswith(f"bogus\n{ERROR_MARK}") and "[GOAL]⊢ b = a[PROOFSTEP]dive1\n" in stuck_text, stuck_text
    assert stuck_text.endswith("[GOAL]⊢ dive 2[PROOFSTEP]"), stuck_text
    for e in episodes:   # sampled tokens carry the engine's logprobs, env tokens 0.0 and mask False
        sampled = [lp for lp, m in zip(e.rollout_logprobs, e.loss_mask, strict=True) if m]
        env = [lp for lp, m in zip(e.rollout_logprobs, e.loss_mask, strict=True) if not m]
        assert set(sampled) == {LOGPROB} and set(env) <= {0.0}, (sampled, env)
    assert len(turn_starts(proved)) == 2 and len(turn_starts(stuck)) == 3, (turn_starts(proved), turn_starts(stuck))
    sampled_text = TOKENIZER.decode([t for t, m in zip(stuck.completion_ids, stuck.loss_mask, strict=True) if m])
    assert sampled_text == "bogus\ndive1\ndive2\n", repr(sampled_text)


def test_tactic_statement_that_fails_gives_no_episodes(verifier: Verifier) -> None:
    episodes = tactic_episodes([problem("crash_tree"), problem()], TokenScriptEngine(), repl_sessions(verifier),  # type: ignore[arg-type]
                               TOKENIZER, SamplingConfig(n=1, max_tokens=16), budget=TacticBudget(turns=2), score=SCORE)
    assert {e.group for e in episodes} == {1}, [(e.problem_id, e.outcome) for e in episodes]


def test_tactic_context_budget_truncates(verifier: Verifier) -> None:
    engine = TokenScriptEngine()
    root_len = len(TOKENIZER("[GOAL]⊢ b = a[PROOFSTEP]")["input_ids"])
    (e,) = tactic_episodes([problem()], engine, repl_sessions(verifier), TOKENIZER,  # type: ignore[arg-type]
                           SamplingConfig(n=1, max_tokens=16, seed=3), budget=TacticBudget(turns=8, max_tokens=root_len + 20), score=SCORE)
    assert e.truncated and e.outcome == "rejected:incomplete" and e.reward == 0.0, e
    assert len(e.prompt_ids) + len(e.completion_ids) >= root_len + 20 - 16, len(e.completion_ids)


class WholeEngine:
    """Text-in, token-out: fixed completions, token ids from the real tokenizer."""

    def __init__(self, texts: Sequence[str]) -> None:
        self.texts = texts

    def generate(self, prompts: Sequence[Prompt], sampling: SamplingConfig) -> list[PromptResult]:
        out = []
        for p in prompts:
            assert isinstance(p, str)
            ids = tuple(TOKENIZER(p)["input_ids"])
            comps = [Completion(t, tuple(TOKENIZER(t, add_special_tokens=False)["input_ids"]), (-0.5,) * len(TOKENIZER(t, add_special_tokens=False)["input_ids"]),
                                "stop" if i % 2 == 0 else "length") for i, t in enumerate(self.texts[:sampling.n])]
            out.append(PromptResult(p, ids, tuple(comps)))
        return out


def test_whole_proof_episodes(tmp_path: Path) -> None:
    rules = tmp_path / "rules.json"
    rules.write_text(json.dumps({"rules": [
        {"substring": "linarith", "messages": [{"severity": "error", "pos": {"line": 2, "column": 2}, "data": "linarith failed"}]},
        {"substring": "crash_me", "fault": "crash"}]}))
    problems = [problem("t1", "(a b : ℕ) : a + b = b + a"), problem("t2", "(a : ℕ) : a + 0 = a")]
    engine = WholeEngine(["  omega\n```", "  linarith\n```", "  sorry\n```"])
    with Verifier(VerifierConfig(backend="standin", standin_rules=rules, workers=2, retries=0)) as verifier:
        episodes = whole_proof_episodes(problems, engine, verifier, SamplingConfig(n=3),  # type: ignore[arg-type]
                                        template="deepseek-prover-v1.5", policy_version=7, score=SCORE)
        samples = sample_whole(problems, engine, SamplingConfig(n=3), template="deepseek-prover-v1.5")  # type: ignore[arg-type]
        judged = judge_whole(samples, verifier, score=SCORE, policy_version=7)
    assert [(e.problem_id, e.group, e.reward, e.outcome) for e in episodes] == [
        ("t1", 0, 1.0, "accepted"), ("t1", 0, 0.0, "rejected:lean_error"), ("t1", 0, 0.0, "rejected:forbidden"),
        ("t2", 1, 1.0, "accepted"), ("t2", 1, 0.0, "rejected:lean_error"), ("t2", 1, 0.0, "rejected:forbidden"),
    ], episodes
    assert judged == episodes, "the two halves (sample_whole, judge_whole) make the same episodes"
    for e, sample in zip(episodes, samples, strict=True):
        assert e.prompt_ids == sample.prompt_ids and e.completion_ids == sample.completion.token_ids, e
        assert all(e.loss_mask) and e.rollout_logprobs == sample.completion.logprobs and e.policy_version == 7, e
        assert e.truncated == (sample.completion.finish_reason == "length"), e


def test_not_checked_is_excluded(tmp_path: Path) -> None:
    rules = tmp_path / "rules.json"
    rules.write_text(json.dumps({"rules": [{"substring": "crash_me", "fault": "crash"}]}))
    engine = WholeEngine(["  omega\n```", "  crash_me\n```"])
    with Verifier(VerifierConfig(backend="standin", standin_rules=rules, workers=1, retries=0)) as verifier:
        episodes = whole_proof_episodes([problem("t1", "(a : ℕ) : a = a")], engine, verifier,  # type: ignore[arg-type]
                                        SamplingConfig(n=2), template="deepseek-prover-v1.5", score=SCORE)
    assert [e.outcome for e in episodes] == ["accepted"], [e.outcome for e in episodes]


@pytest.mark.slow
def test_tiny_policy_tactic_episodes_feed_exact_prefixes(tmp_path: Path, verifier: Verifier) -> None:
    """The real transformers engine on a random tiny checkpoint: multi-turn dialogues whose every
    turn the engine saw as exactly prompt_ids + completion_ids[:turn start] (its own report of
    the prompt ids), sampled tokens with finite logprobs, env tokens masked."""
    from policy.config import PolicyConfig
    from policy.engines import make_engine
    from prover.checkpoints import init_checkpoint

    init_checkpoint("tiny", tmp_path / "tiny")
    seen: list[tuple[int, ...]] = []
    with make_engine(PolicyConfig(checkpoint=str(tmp_path / "tiny"), engine="transformers", max_model_len=512)) as real:
        class Recording:
            def generate(self, prompts: Sequence[Prompt], sampling: SamplingConfig) -> list[PromptResult]:
                results = real.generate(prompts, sampling)
                seen.extend(r.prompt_token_ids for r in results)
                return results

        episodes = tactic_episodes([problem(), problem("tree2")], Recording(), repl_sessions(verifier),  # type: ignore[arg-type]
                                   load_tokenizer(tmp_path / "tiny"), SamplingConfig(n=2, max_tokens=6, seed=1),
                                   budget=TacticBudget(turns=3, max_tokens=256), verifier=verifier, score=SCORE)
    assert sorted(e.group for e in episodes) == [0, 0, 1, 1], episodes
    assert_exact_prefixes(episodes, seen)
    for e in episodes:
        assert e.reward == 0.0 and e.outcome == "rejected:incomplete", e   # noise proves nothing here
        assert 1 <= len(turn_starts(e)) <= 3 and not all(e.loss_mask), (turn_starts(e), e.loss_mask)
        assert all(lp <= 0.0 for lp in e.rollout_logprobs), e.rollout_logprobs
