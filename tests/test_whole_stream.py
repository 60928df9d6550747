"""Whole-proof sampling and Lean-feedback repair with generation and verification overlapped
(`prove_whole(stream=True)`, `prove_repair(stream=True)`): each problem's candidates go to the
verifier as soon as its samples are complete, while the engine samples the rest; results still
come in problem order, the same records as without overlap. The engine here hands its prompts on one by one (`generate_iter`) and waits, at a sync
point, for what the test says must already have happened: a missing overlap fails the wait
(no timing is measured)."""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from lean_env.config import VerifierConfig
from lean_env.verdict import Verdict
from lean_env.verifier import Verifier, VerifyRequest
from policy.config import SamplingConfig
from policy.engines import Completion, PromptResult
from prover.problems import Problem
from prover.search.repair import prove_repair
from prover.search.whole import prove_whole

HEADER = "import Mathlib\n\n"
WAIT_S = 20.0   # a sync point that is never reached fails the test after this long
PROBLEMS = [Problem(name=f"t{i}", split="test", header=HEADER, informal_prefix="",
                    formal_statement=f"theorem t{i} (a b : ℕ) : a + b = b + a := by\n", id=f"t{i}") for i in range(5)]


class RecordingVerifier:
    """The stand-in verifier, recording which problems each `verify_batch` call was sent and
    letting a test hold a call back (`gate`)."""

    def __init__(self, verifier: Verifier) -> None:
        self.verifier = verifier
        self.received: list[list[str]] = []
        self.requests: Counter[str] = Counter()   # requests sent, per problem name
        self.changed = threading.Condition()
        self.gate: Callable[[], None] = lambda: None

    def verify_batch(self, requests: Sequence[VerifyRequest], *,
                     progress: Callable[[int, int], None] | None = None) -> list[Verdict]:
        with self.changed:
            self.received.append(sorted({r.name for r in requests}))
            self.requests.update(r.name for r in requests)
            self.changed.notify_all()
        self.gate()
        return self.verifier.verify_batch(requests, progress=progress)

    def names(self) -> set[str]:
        return {name for call in self.received for name in call}

    def wait_for(self, names: set[str]) -> bool:
        with self.changed:
            return self.changed.wait_for(lambda: names <= self.names(), timeout=WAIT_S)


class StreamingEngine:
    """Hands each prompt's fixed completions on one at a time; `before(prompt index)` runs
    before a prompt is handed on (the test's sync points), and every call is recorded."""

    def __init__(self, texts: Sequence[str]) -> None:
        self.texts = list(texts)
        self.calls: list[list[str]] = []
        self.before: Callable[[int, list[str]], None] = lambda index, names: None

    def generate(self, prompts: Sequence[str], sampling: SamplingConfig) -> list[PromptResult]:
        return [r for _, r in self.generate_iter(prompts, sampling)]

    def generate_iter(self, prompts: Sequence[str], sampling: SamplingConfig) -> Iterator[tuple[int, PromptResult]]:
        names = [next(p.name for p in PROBLEMS if p.formal_statement in prompt) for prompt in prompts]
        self.calls.append(names)
        for i, prompt in enumerate(prompts):
            self.before(i, names)
            yield i, PromptResult(prompt, (1,), tuple(Completion(t, (5, 6), (-0.1, -0.2), "stop")
                                                      for t in self.texts[:sampling.n]))


@pytest.fixture
def verifier(tmp_path: Path) -> Iterator[RecordingVerifier]:
    rules = tmp_path / "rules.json"
    rules.write_text(json.dumps({"rules": [{"substring": "simp", "messages": [
        {"severity": "error", "pos": {"line": 2, "column": 2}, "data": "simp failed"}]}]}))
    with Verifier(VerifierConfig(backend="standin", standin_rules=rules, workers=2)) as real:
        yield RecordingVerifier(real)


def test_a_problem_is_verified_while_the_rest_of_its_batch_is_sampled(verifier: RecordingVerifier) -> None:
    """One batch of 3 problems (one engine call): before the engine hands on problem k, the
    verifier has already been sent problems 0..k-1."""
    engine = StreamingEngine(["  omega\n", "  simp\n"])
    reached: list[tuple[str, bool]] = []
    engine.before = lambda i, names: reached.append((names[i], verifier.wait_for(set(names[:i]))))
    results = list(prove_whole(PROBLEMS[:3], engine, verifier, SamplingConfig(n=2), template="plain",
                               problems_per_batch=8))
    assert engine.calls == [["t0", "t1", "t2"]], engine.calls
    assert reached == [("t0", True), ("t1", True), ("t2", True)], \
        f"(problem, were the earlier ones sent to the verifier first): {reached}; calls {verifier.received}"
    assert [r.problem.id for r in results] == ["t0", "t1", "t2"], [r.problem.id for r in results]
    for r in results:
        assert [(a.sample, a.verdict.outcome) for a in r.attempts] == [(0, "accepted"), (1, "rejected:lean_error")], r


def test_the_engine_samples_the_next_batch_while_the_verifier_checks(verifier: RecordingVerifier) -> None:
    """3 batches: the verifier holds its first call (batch 1) until the engine samples batch 2,
    so streaming must go on sampling meanwhile; and the engine stays at most one batch ahead:
    batch 3 starts only once batch 1's results are out."""
    engine = StreamingEngine(["  omega\n", "  simp\n"])
    second = threading.Event()
    got: list[str] = []
    out_at_batch_3: list[list[str]] = []

    def before(i: int, names: list[str]) -> None:
        if len(engine.calls) == 2:
            second.set()
        if len(engine.calls) == 3 and i == 0:
            out_at_batch_3.append(list(got))

    def hold() -> None:
        if not second.wait(WAIT_S):
            raise AssertionError(f"the engine did not sample batch 2 while the verifier held batch 1: "
                                 f"calls {engine.calls}")

    engine.before, verifier.gate = before, hold
    for result in prove_whole(PROBLEMS, engine, verifier, SamplingConfig(n=2), template="plain", problems_per_batch=2):
        got.append(result.problem.id)
    assert engine.calls == [["t0", "t1"], ["t2", "t3"], ["t4"]], engine.calls
    assert got == [p.id for p in PROBLEMS], got
    assert out_at_batch_3 == [["t0", "t1"]], f"results out when batch 3 started: {out_at_batch_3}"
    assert sorted(verifier.names()) == [p.name for p in PROBLEMS], verifier.received


@pytest.mark.parametrize("samples_per_call", [None, 1])
def test_streaming_gives_the_same_records_as_no_overlap(verifier: RecordingVerifier,
                                                       samples_per_call: int | None) -> None:
    """The same problems, samples and verdicts with and without overlap, also when each problem
    is sampled one sample per call (a problem is complete only after its last call)."""
    runs = {}
    for stream in (False, True):
        engine = StreamingEngine(["  omega\n", "  simp\n", "  sorry\n"])
        verified: list[int] = []
        results = list(prove_whole(PROBLEMS, engine, verifier, SamplingConfig(n=3), template="plain",
                                   problems_per_batch=2, samples_per_call=samples_per_call, stream=stream,
                                   on_verified=verified.append))
        runs[stream] = ([(r.problem.id, [(a.sample, a.candidate, a.verdict.outcome) for a in r.attempts])
                         for r in results], sum(verified), len(engine.calls))
    assert runs[True] == runs[False], f"streaming {runs[True]}\nno overlap {runs[False]}"
    records, verified_count, calls = runs[True]
    assert [pid for pid, _ in records] == [p.id for p in PROBLEMS] and verified_count == 15, (records, verified_count)
    # the engine answers a call for k samples with its first k texts
    want = ["accepted", "rejected:lean_error", "rejected:forbidden"] if samples_per_call is None else ["accepted"] * 3
    assert [outcome for _, _, outcome in records[0][1]] == want, records
    assert calls == (3 if samples_per_call is None else 9), f"{calls} engine calls"


def test_a_verifier_failure_reaches_the_caller(verifier: RecordingVerifier) -> None:
    engine = StreamingEngine(["  omega\n"])

    def broken() -> None:
        raise RuntimeError("verifier pool is gone")

    verifier.gate = broken
    with pytest.raises(RuntimeError, match="verifier pool is gone"):
        list(prove_whole(PROBLEMS[:3], engine, verifier, SamplingConfig(n=1), template="plain", problems_per_batch=1))


def test_ctrl_c_keeps_what_was_verified(verifier: RecordingVerifier) -> None:
    """A KeyboardInterrupt in the engine (Ctrl-C) while batch 3 is sampled: the problems the
    verifier had taken (batches 1 and 2) still reach the caller, in order, before the
    interrupt does (the run folder keeps them; a resume does not redo them)."""
    engine = StreamingEngine(["  omega\n"])

    def interrupt(i: int, names: list[str]) -> None:
        if len(engine.calls) == 3:
            assert verifier.wait_for({"t0", "t1"}), verifier.received
            raise KeyboardInterrupt

    engine.before = interrupt
    got: list[str] = []
    with pytest.raises(KeyboardInterrupt):
        for result in prove_whole(PROBLEMS, engine, verifier, SamplingConfig(n=1), template="plain",
                                  problems_per_batch=1):
            got.append(result.problem.id)
    assert got == ["t0", "t1"], f"results before the interrupt: {got}; verifier calls {verifier.received}"


def test_repair_verifies_a_problem_while_the_rest_of_its_round_is_sampled(verifier: RecordingVerifier) -> None:
    """Repair's round 0 over 3 problems (one engine call, 2 samples each) and its correction round
    (one prompt per failed attempt): before the engine hands on prompt k of a round, the verifier
    has been sent the candidates of that round's prompts 0..k-1."""
    engine = StreamingEngine(["  simp\n", "  simp\n"])   # both samples fail: every attempt is corrected
    reached: list[tuple[int, str, bool]] = []

    def before(i: int, names: list[str]) -> None:
        per_prompt = 2 if len(engine.calls) == 1 else 1
        earlier = Counter({n: 2 for n in names}) if len(engine.calls) == 2 else Counter()  # round 0's requests
        want = earlier + Counter({n: per_prompt * names[:i].count(n) for n in set(names[:i])})
        with verifier.changed:
            ok = verifier.changed.wait_for(lambda: all(verifier.requests[n] >= k for n, k in want.items()),
                                           timeout=WAIT_S)
        reached.append((len(engine.calls), names[i], ok))

    engine.before = before
    results = list(prove_repair(PROBLEMS[:3], engine, verifier, SamplingConfig(n=2), template="plain", rounds=1))
    assert [len(c) for c in engine.calls] == [3, 6] and engine.calls[0] == ["t0", "t1", "t2"], engine.calls
    assert all(ok for _, _, ok in reached), f"(call, problem, were the round's earlier prompts verified first): {reached}"
    assert [len(r.attempts) for r in results] == [4, 4, 4], [[a.verdict.outcome for a in r.attempts] for r in results]


def test_repair_streaming_gives_the_same_records_as_no_overlap(verifier: RecordingVerifier) -> None:
    runs = {}
    for stream in (False, True):
        engine = StreamingEngine(["  omega\n", "  simp\n", "  sorry\n"])
        results = list(prove_repair(PROBLEMS, engine, verifier, SamplingConfig(n=3), template="plain", rounds=2,
                                    stream=stream))
        runs[stream] = [(r.problem.id, [(a.sample, a.round, a.parent, a.candidate, a.verdict.outcome) for a in r.attempts])
                        for r in results]
    assert runs[True] == runs[False], f"streaming {runs[True]}\nno overlap {runs[False]}"
    assert [pid for pid, _ in runs[True]] == [p.id for p in PROBLEMS]
    assert runs[True][0][1][0][4] == "accepted", runs[True][0]
