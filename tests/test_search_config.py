"""The [search] section (prover/config.py SearchConfig) and how `prove`/`bench --method search`
take best-first search from it: its checks, the template and score reaching the search, the
LeanDojo backend's repo/commit/file reaching LeanDojo's constructors, the bench manifest and
--resume.

The search runs on the stand-in tactic tree of tests/test_best_first.py (rules in
tests/lean_env/rules/tactic_tree.json): an engine proposes the tree's tactics with chosen
log-probs, so the order in which states are expanded shows the configured `length_alpha`
(0: R, B1, B2, A; 0.5 and 1: R, B1, B2, B3, A), and the prompts it receives show the configured
template. The engine replaces `policy.engines.make_engine` (the CLI's only way to an engine);
the checkpoint folder is a real tiny one (its tokenizer measures the prompts). LeanDojo is
not run here (no Lean, no traced repo): its `LeanGitRepo`, `Theorem` and `Dojo` are replaced by
recorders over the same tree.
"""

from __future__ import annotations

import contextlib
import json
import sys
import tomllib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, get_args

import pytest
from typer.testing import CliRunner

from policy.config import SamplingConfig
from policy.engines import Completion, PromptResult
from prover.cli import app
from prover.config import ConfigError, SearchConfig, TacticTemplateName, resolve_config
from prover.errors import UserError
from prover.search.best_first import TACTIC_TEMPLATES, SearchBudget, dojo_theorems, prove_best_first
from tests.test_best_first import HEADER, NAMES, RULES, SAMPLING, TREE, TreeDojo, problem

runner = CliRunner()
URL, COMMIT = "https://github.com/yangky11/miniF2F-lean4", "b" * 40
DOJO = {"backend": "dojo", "dojo_url": URL, "dojo_commit": COMMIT, "dojo_file_path": "MiniF2F/Valid.lean"}
PROOF = "theorem tree (a b : ℕ) (h : a = b) : b = a := by\n  symm\n  exact h\n"


# --- the section's checks ------------------------------------------------------------------------

def _toml(path: Path, search: dict[str, Any]) -> Path:
    path.write_text("[search]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in search.items()), encoding="utf-8")
    return path


@pytest.mark.parametrize(("search", "quoted"), [
    ({"backend": "dojo"}, "set search.dojo_url, search.dojo_commit, search.dojo_file_path"),
    ({"backend": "dojo", "dojo_url": URL, "dojo_file_path": "MiniF2F/Test.lean"}, "set search.dojo_commit"),
    (DOJO | {"dojo_file_path": "MiniF2F/Valid"}, "search.dojo_file_path = 'MiniF2F/Valid': LeanDojo takes"),
    ({"template": "reprover"}, "search.template: Input should be 'bfs-prover' or 'gptf' (got 'reprover')"),
    ({"length_alpha": 2.0}, "search.length_alpha: Input should be less than or equal to 1"),
    ({"alpha": 0.5}, "search.alpha: Extra inputs are not permitted"),
])
def test_a_bad_search_section_is_one_line_naming_its_keys(search: dict[str, Any], quoted: str,
                                                          tmp_path: Path) -> None:
    path = _toml(tmp_path / "run.toml", search)
    with pytest.raises(ConfigError) as caught:
        resolve_config(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: search") and quoted in message and "\n" not in message, message


def test_the_section_defaults_and_its_templates() -> None:
    config = resolve_config(None).search
    assert (config.backend, config.template, config.length_alpha, config.concurrency, config.dojo_url) == \
        ("repl", "bfs-prover", 0.5, None, None), config
    # The names the config accepts are the search's templates, no more and no fewer.
    assert set(get_args(TacticTemplateName)) == set(TACTIC_TEMPLATES), (get_args(TacticTemplateName), TACTIC_TEMPLATES)
    complete = SearchConfig.model_validate(DOJO)
    assert complete.dojo_file_path == "MiniF2F/Valid.lean", complete


# --- LeanDojo's constructors get the configured repo, commit, file and the problem's name ---------

class DojoRecorder:
    """`lean_dojo.LeanGitRepo`, `Theorem` and `Dojo` replaced by recorders: the repo and theorem
    are plain values of what they were built from; `Dojo` is TreeDojo, noting its theorem."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, *, repo_error: Exception | None = None) -> None:
        import lean_dojo

        self.repos: list[tuple[str, str]] = []
        self.theorems: list[tuple[Any, str, str]] = []
        self.dojos: list[tuple[Any, int]] = []
        recorder = self

        def repo(url: str, commit: str) -> tuple[str, str, str]:
            recorder.repos.append((url, commit))
            if repo_error is not None:
                raise repo_error
            return ("LeanGitRepo", url, commit)

        def theorem(repo: Any, file_path: str, full_name: str) -> tuple[str, Any, str, str]:
            recorder.theorems.append((repo, file_path, full_name))
            return ("Theorem", repo, file_path, full_name)

        class Dojo(TreeDojo):
            def __init__(self, entry: Any, timeout: int) -> None:
                recorder.dojos.append((entry, timeout))
                super().__init__(entry, timeout)

        monkeypatch.setattr(lean_dojo, "LeanGitRepo", repo)
        monkeypatch.setattr(lean_dojo, "Theorem", theorem)
        monkeypatch.setattr(lean_dojo, "Dojo", Dojo)


class TreeEngine:
    """Proposes TREE's tactics for a state in either template's prompt; records each prompt's
    template and state (by TREE's names), the stop strings it was given, and (as the CLI's
    engine) how often it was loaded."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []
        self.stops: list[list[str]] = []
        self.loaded = 0

    def generate(self, prompts: Sequence[str], sampling: SamplingConfig) -> list[PromptResult]:
        self.stops.append(list(sampling.stop))
        out = []
        for prompt in prompts:
            if prompt.startswith("[GOAL]") and prompt.endswith("[PROOFSTEP]"):
                template, state = "gptf", prompt[len("[GOAL]"):-len("[PROOFSTEP]")]
            elif prompt.endswith(":::"):
                template, state = "bfs-prover", prompt[:-3]
            else:
                raise AssertionError(f"a prompt of neither template: {prompt!r}")
            self.seen.append((template, NAMES.get(state, state)))
            proposals = TREE.get(state, [("nothing", -5.0)])
            picks = [proposals[i % len(proposals)] for i in range(sampling.n)]
            out.append(PromptResult(prompt, (1,), tuple(
                Completion(f" {t}\n", (7, 8), (lp / 2, lp / 2), "stop") for t, lp in picks)))
        return out

    def templates(self) -> set[str]:
        return {t for t, _ in self.seen}

    def expanded(self) -> list[str]:
        return [s for _, s in self.seen]


def test_the_configured_repo_commit_and_file_reach_leandojo(monkeypatch: pytest.MonkeyPatch) -> None:
    dojo = DojoRecorder(monkeypatch)
    config = SearchConfig.model_validate(DOJO | {"length_alpha": 0.0, "dojo_timeout_s": 42})
    engine = TreeEngine()
    results = list(prove_best_first([problem("tree"), problem("tree2")], engine, None, SAMPLING,  # type: ignore[arg-type]
                                    budget=SearchBudget(expansions=10), config=config))
    assert [(r.problem.name, r.proof) for r in results] == [("tree", PROOF), ("tree2", PROOF.replace("tree", "tree2"))], \
        [r.detail for r in results]
    assert dojo.repos == [(URL, COMMIT)], dojo.repos   # made once, for every theorem
    repo = ("LeanGitRepo", URL, COMMIT)
    assert dojo.theorems == [(repo, "MiniF2F/Valid.lean", "tree"), (repo, "MiniF2F/Valid.lean", "tree2")], dojo.theorems
    assert dojo.dojos == [(("Theorem", repo, "MiniF2F/Valid.lean", name), 42) for name in ("tree", "tree2")], dojo.dojos
    # One file per theorem: `{name}` in the path is the problem's name.
    per_file = dojo_theorems(config.model_copy(update={"dojo_file_path": "MiniF2F/Test/{name}.lean"}))
    assert per_file(problem("amc12_2000_p1")) == ("Theorem", repo, "MiniF2F/Test/amc12_2000_p1.lean", "amc12_2000_p1")


def test_a_repo_leandojo_cannot_open_is_a_user_error_naming_the_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    DojoRecorder(monkeypatch, repo_error=ValueError("not-a-url is not a valid URL"))
    theorem = dojo_theorems(SearchConfig.model_validate(DOJO | {"dojo_url": "not-a-url"}))
    with pytest.raises(UserError) as caught:
        theorem(problem("tree"))
    message = str(caught.value)
    assert "search.dojo_url = 'not-a-url'" in message and "is not a valid URL" in message, message


# --- prove and bench take the search from the section ---------------------------------------------

@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("search-config") / "tiny"
    result = runner.invoke(app, ["model", "init", "--preset", "tiny", "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture
def engine(monkeypatch: pytest.MonkeyPatch) -> Iterator[TreeEngine]:
    """The tree engine in place of the CLI's engine (`policy.engines.make_engine`)."""
    import policy.engines

    tree = TreeEngine()

    def make_engine(policy: Any) -> contextlib.AbstractContextManager[TreeEngine]:
        tree.loaded += 1
        return contextlib.nullcontext(tree)

    monkeypatch.setattr(policy.engines, "make_engine", make_engine)
    yield tree


def _problems(tmp_path: Path) -> Path:
    path = tmp_path / "tree.jsonl"
    path.write_text("".join(json.dumps({"name": name, "split": "test", "header": HEADER, "formal_statement":
                                        f"theorem {name} (a b : ℕ) (h : a = b) : b = a := by\n"}) + "\n"
                            for name in ("tree", "tree2")), encoding="utf-8")
    return path


def _prove(tiny: Path, tmp_path: Path, out: str, *extra: str, config: Path | None = None) -> Any:
    head = ["--config", str(config)] if config is not None else []
    return runner.invoke(app, [*head, "prove", "tree", "--problems", str(_problems(tmp_path)), "--method", "search",
                               "--samples", "4", "--max-tokens", "8", "--expansions", "10", "--model", str(tiny),
                               "--out", str(tmp_path / out), "--standin", str(RULES), "--json", *extra])


def test_prove_takes_template_and_alpha_from_the_section(tiny: Path, tmp_path: Path, engine: TreeEngine) -> None:
    config = _toml(tmp_path / "run.toml", {"template": "gptf", "length_alpha": 0.0})
    result = _prove(tiny, tmp_path, "gptf", config=config)
    assert result.exit_code == 0, result.output
    assert (engine.templates(), engine.expanded()) == ({"gptf"}, ["R", "B1", "B2", "A"]), engine.seen
    assert all("\n" in stop for stop in engine.stops), engine.stops   # gptf's tactic ends at a newline
    summary = json.loads(result.stdout)
    assert summary["results"][0]["proof"] == PROOF and summary["search"]["template"] == "gptf", summary
    resolved = tomllib.loads((tmp_path / "gptf" / "config.resolved.toml").read_text(encoding="utf-8"))["search"]
    assert (resolved["backend"], resolved["template"], resolved["length_alpha"]) == ("repl", "gptf", 0.0), resolved


def test_prove_without_the_section_searches_as_before(tiny: Path, tmp_path: Path, engine: TreeEngine,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    # backend = repl never looks for LeanDojo: here it is not installed, and nothing changes.
    monkeypatch.setitem(sys.modules, "lean_dojo", None)
    result = _prove(tiny, tmp_path, "default")
    assert result.exit_code == 0, result.output
    # bfs-prover's prompt; alpha 0.5 puts B3 (-1.2 / 3**0.5 = -0.69) before A (-1.0)
    assert (engine.templates(), engine.expanded()) == ({"bfs-prover"}, ["R", "B1", "B2", "B3", "A"]), engine.seen
    assert json.loads(result.stdout)["results"][0]["proof"] == PROOF, result.stdout


def test_prove_flags_override_the_section(tiny: Path, tmp_path: Path, engine: TreeEngine) -> None:
    config = _toml(tmp_path / "run.toml", {"template": "bfs-prover", "length_alpha": 0.0})
    result = _prove(tiny, tmp_path, "flag", "--tactic-template", "gptf", config=config)
    assert result.exit_code == 0 and engine.templates() == {"gptf"}, (result.output, engine.seen)
    wrong = _prove(tiny, tmp_path, "wrong", "--search-backend", "dojo")
    message = wrong.stderr.strip()
    assert wrong.exit_code == 2 and "set search.dojo_url, search.dojo_commit, search.dojo_file_path" in message, \
        wrong.output
    assert "\n" not in message and "Traceback" not in wrong.output, message


def test_prove_with_the_dojo_backend_uses_the_configured_theorems(tiny: Path, tmp_path: Path, engine: TreeEngine,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    dojo = DojoRecorder(monkeypatch)
    config = _toml(tmp_path / "dojo.toml", DOJO | {"length_alpha": 0.0})
    result = _prove(tiny, tmp_path, "dojo", config=config)
    assert result.exit_code == 0, result.output
    repo = ("LeanGitRepo", URL, COMMIT)
    assert (dojo.repos, dojo.theorems) == ([(URL, COMMIT)], [(repo, "MiniF2F/Valid.lean", "tree")]), dojo.theorems
    assert engine.expanded() == ["R", "B1", "B2", "A"], engine.seen
    found = json.loads(result.stdout)["results"][0]
    assert found["proof"] == PROOF, found


def test_a_missing_leandojo_is_one_line_before_any_model_loads(tiny: Path, tmp_path: Path, engine: TreeEngine,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "lean_dojo", None)   # as if not installed
    config = _toml(tmp_path / "dojo.toml", DOJO)
    proved = _prove(tiny, tmp_path, "p", config=config)
    benched = runner.invoke(app, ["--config", str(config), "bench", "--problems", str(_problems(tmp_path)),
                                  "--method", "search", "--model", str(tiny), "--out", str(tmp_path / "b"),
                                  "--standin", str(RULES)])
    for result in (proved, benched):
        message = result.stderr.strip()
        assert result.exit_code == 2 and "\n" not in message, result.output
        assert "search.backend = 'dojo' needs LeanDojo" in message and "pip install 'lean-prover[dojo]'" in message, \
            message
    assert engine.loaded == 0, engine.loaded


def test_bench_records_the_section_and_resume_refuses_a_change(tiny: Path, tmp_path: Path,
                                                               engine: TreeEngine) -> None:
    config = _toml(tmp_path / "run.toml", {"length_alpha": 0.0})
    out = tmp_path / "bench"
    args = ["bench", "--problems", str(_problems(tmp_path)), "--method", "search", "--n", "4", "--expansions", "10",
            "--tactic-template", "gptf", "--model", str(tiny), "--out", str(out), "--standin", str(RULES), "--json"]
    first = runner.invoke(app, ["--config", str(config), *args])
    assert first.exit_code == 0, first.output
    summary = json.loads(first.stdout)
    assert summary["pass_at_k"][0]["mean"] == 1.0 and engine.templates() == {"gptf"}, (summary, engine.seen)
    recorded = summary["manifest"]["method_options"]["search"]
    assert recorded == {"backend": "repl", "template": "gptf", "length_alpha": 0.0, "dojo_timeout_s": 600.0}, recorded
    report = (out / "report.md").read_text(encoding="utf-8")
    assert '"template": "gptf"' in report, report
    same = runner.invoke(app, ["--config", str(config), *args, "--resume"])
    assert same.exit_code == 0, same.output
    changed = runner.invoke(app, ["--config", str(_toml(tmp_path / "other.toml", {"length_alpha": 1.0})), *args,
                                  "--resume"])
    message = changed.stderr.strip()
    assert changed.exit_code == 2 and "--resume with a different config: search.length_alpha: 0.0 -> 1.0" in message, \
        changed.output
