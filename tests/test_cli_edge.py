"""The CLI edge (issue 9, items 2-4 and 6): one JSON document on stdout, one error line and one
exit code per kind of outcome, inputs people will give. typer's CliRunner where it can see what
a user sees; a real process where file descriptors or the environment matter."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from prover.cli import app
from prover.cli.common import EXIT_NOT_CHECKED, EXIT_OK, EXIT_REJECTED, EXIT_USAGE, exit_code_for

runner = CliRunner()
REPO = Path(__file__).resolve().parents[1]
RULES = REPO / "tests" / "lean_env" / "rules" / "basic.json"
PROOF = "import Mathlib\n\ntheorem a : True := by\n  trivial\n\ntheorem b : 1 = 1 := by\n  rfl\n"


def _run(*args: object, env: dict[str, str] | None = None):
    return runner.invoke(app, [str(a) for a in args], env=env)


def _one_error_line(result, code: int = EXIT_USAGE) -> str:
    """The single `error: ...` line on stderr of a command that failed with `code`."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == code and len(lines) == 1 and lines[0].startswith("error: "), (
        f"want exit {code} and one error line; got exit {result.exit_code}, stderr {lines}, "
        f"stdout {result.stdout!r}")
    assert "Traceback" not in result.output and "╭" not in result.output, result.output
    return lines[0]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("edge") / "tiny"
    result = _run("model", "init", "--preset", "tiny", "--out", out)
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture()
def proof(tmp_path: Path) -> Path:
    path = tmp_path / "two.lean"
    path.write_text(PROOF)
    return path


# --- item 2: every --json command prints exactly one JSON document on stdout ----------------

def _json_commands(command, path: tuple[str, ...] = ()) -> list[str]:
    """Every command of the tree that takes --json, as "group command"."""
    found = []
    for name, sub in getattr(command, "commands", {}).items():
        found += _json_commands(sub, (*path, name))
    if any("--json" in getattr(p, "opts", ()) for p in getattr(command, "params", ())):
        found.append(" ".join(path))
    return found


JSON_CALLS: dict[str, list[str] | None] = {
    "data inspect": ["data", "inspect", "minif2f-valid", "--limit", "3"],
    "data suites": ["data", "suites"],
    "lean doctor": ["lean", "doctor"],
    "lean check": ["lean", "check", "{proof}", "--standin", str(RULES)],
    "lean check-set": ["lean", "check-set", "{proofs}", "--problems", "{problems}", "--static"],
    "model init": ["model", "init", "--preset", "tiny", "--out", "{tmp}/m"],
    "model info": ["model", "info", "{tiny}"],
    "config show": ["config", "show"],
    "prove whole": ["prove", "whole", "--problems", "{problems}", "--model", "{tiny}", "--engine",
                    "transformers", "--samples", "1", "--max-tokens", "4", "--out", "{tmp}/run",
                    "--standin", str(RULES)],
    "bench": ["bench", "--problems", "{problems}", "--model", "{tiny}", "--engine", "transformers", "--n", "1",
              "--max-tokens", "4", "--out", "{tmp}/bench", "--standin", str(RULES)],
    "bench compare": ["bench", "compare", "{tmp}/bench", "{tmp}/bench"],
    "distill": ["distill", "--problems", "{problems}", "--model", "{tiny}", "--engine", "transformers", "--n", "1",
                "--max-tokens", "4", "--out", "{tmp}/distill", "--standin", str(RULES)],
    "data curate": ["data", "curate", "{proofs}", "--problems", "{problems}", "--verify", "--out", "{tmp}/curate",
                    "--standin", str(RULES)],
    "model plan": ["model", "plan", "--preset", "tiny", "--gpus", "2", "--gpu-memory", "80"],
    "sft": ["sft", "--model", "{tiny}", "--corpus", "{pairs}", "--format", "prompt-completion", "--steps", "1",
            "--device", "cpu", "--out", "{tmp}/sft"],
    "train report": ["train", "report", "{tmp}/sft"],
    # Ray, a vLLM engine and REPL pools for a minute: its --json stdout is parsed by
    # tests/rl/test_train.py::test_grpo_example_runs_through_ray_vllm_and_the_standin.
    "train": None,
    "iterate": ["iterate", "--problems", "{problems}", "--model", "{tiny}", "--engine", "transformers", "--n", "1",
                "--max-tokens", "4", "--rounds", "1", "--steps", "1", "--out", "{tmp}/iterate", "--standin", str(RULES)],
}


def test_every_json_command_prints_one_json_document(tmp_path: Path, tiny: Path, proof: Path,
                                                     shared_data: Path) -> None:
    import typer.main

    commands = sorted(_json_commands(typer.main.get_command(app)))
    assert commands == sorted(JSON_CALLS), f"--json commands {commands}; tested {sorted(JSON_CALLS)}"
    problems = tmp_path / "problems.lean"
    problems.write_text("import Mathlib\n\ntheorem b : 1 = 1 := by\n  sorry\n")
    proofs = tmp_path / "proofs.jsonl"
    proofs.write_text(json.dumps({"name": "b", "code": PROOF}) + "\n")
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"prompt": "theorem b : 1 = 1 := by\n", "completion": "  rfl\n"}) + "\n")
    values = {"proof": proof, "proofs": proofs, "problems": problems, "tmp": tmp_path, "tiny": tiny, "pairs": pairs}
    for name, args in JSON_CALLS.items():
        if args is None:
            continue
        result = _run(*[a.format(**values) for a in args], "--json")
        assert result.exit_code in (EXIT_OK, EXIT_REJECTED), f"{name}: exit {result.exit_code}: {result.output}"
        try:
            json.loads(result.stdout)
        except json.JSONDecodeError as exc:
            pytest.fail(f"{name} --json: stdout is not one JSON document ({exc}): {result.stdout!r}")


def test_library_logs_go_to_stderr_once_without_the_mtp_load_report(tmp_path: Path, tiny: Path,
                                                                    shared_data: Path) -> None:
    """A real process: transformers' load report of the MTP layer's keys is gone, every stderr
    line appears once (CI=1 makes transformers propagate to the root handler: twice before), and
    stdout parses."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "CI": "1"}
    command = [sys.executable, "-m", "prover.cli", "prove", "whole", "--problems", "minif2f-valid",
               "--limit", "1", "--model", str(tiny), "--engine", "transformers", "--samples", "1",
               "--max-tokens", "4", "--out", str(tmp_path / "run"), "--standin", str(RULES), "--json"]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert done.returncode in (EXIT_OK, EXIT_REJECTED), f"exit {done.returncode}\nstderr: {done.stderr[-3000:]}"
    summary = json.loads(done.stdout)
    assert summary["total"] == 1, summary
    assert "LOAD REPORT" not in done.stderr and "UNEXPECTED" not in done.stderr, done.stderr[-3000:]
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    repeated = sorted({line for line in lines if lines.count(line) > 1})
    assert not repeated, f"lines printed more than once on stderr: {repeated}"


def test_logging_filters_only_the_mtp_report_and_prints_each_record_once(
        capfd: pytest.CaptureFixture[str]) -> None:
    from prover.logs import configure_logging

    configure_logging(logging.WARNING)
    hub = logging.getLogger("huggingface_hub.test_edge")
    library = logging.getLogger("huggingface_hub")
    saved = library.handlers[:]
    library.handlers[:] = [logging.StreamHandler()]   # what huggingface_hub does, and it propagates
    try:
        hub.warning("hub warning")
        report = ("DeepseekV3ForCausalLM LOAD REPORT from: x\nKey | Status | |\n---+---+-+-\n"
                  "model.layers.2.eh_proj.weight | UNEXPECTED | |\nmodel.layers.2.enorm.weight | UNEXPECTED | |\n")
        logging.getLogger("transformers.modeling_utils").warning(report)
        logging.getLogger("transformers.modeling_utils").warning(
            report.replace("model.layers.2.enorm.weight", "model.layers.0.mlp.gate.weight"))
        logging.getLogger("prover.test").info("not shown at WARNING")
    finally:
        library.handlers[:] = saved
    out, err = capfd.readouterr()
    assert out == "", f"logs reached stdout: {out!r}"
    assert err.count("hub warning") == 1, err
    assert err.count("LOAD REPORT") == 1 and "model.layers.0.mlp.gate.weight" in err, err
    assert "not shown" not in err, err


@pytest.mark.slow
def test_prove_json_with_vllm_keeps_stdout_clean(tmp_path: Path, tiny: Path, shared_data: Path) -> None:
    """vLLM logs to stdout by default, in this process and in its workers (it printed ~70 lines
    before the JSON). A real process, so the workers' file descriptors are what is tested."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("VLLM_LOGGING_STREAM", None)
    command = [sys.executable, "-m", "prover.cli", "--log-level", "info", "prove", "whole",
               "--problems", "minif2f-valid", "--limit", "1", "--model", str(tiny), "--samples", "2",
               "--max-tokens", "8", "--out", str(tmp_path / "run"), "--standin", str(RULES), "--json"]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
    assert done.returncode in (EXIT_OK, EXIT_REJECTED), f"exit {done.returncode}\nstderr: {done.stderr[-3000:]}"
    try:
        summary = json.loads(done.stdout)
    except json.JSONDecodeError:
        pytest.fail(f"stdout is not one JSON document:\n{done.stdout[:3000]}")
    assert (summary["total"], summary["samples_per_problem"]) == (1, 2), summary
    assert "vllm" in done.stderr.lower(), f"vLLM's INFO logs should be on stderr: {done.stderr[-2000:]}"


# --- item 3: user mistakes are one line and exit 2; bugs keep their traceback ---------------

def test_usage_errors_are_one_line_exit_2() -> None:
    for args, needle in [(["data", "inspect"], "Missing argument"), (["nope"], "No such command"),
                         (["data", "inspect", "x", "--limit", "z"], "--limit"),
                         (["--bogus", "data", "suites"], "No such option")]:
        line = _one_error_line(_run(*args))
        assert needle in line, f"{args}: {line}"


@pytest.mark.parametrize("value", ["inf", "1e308", "nan", "-1"])
def test_timeout_out_of_range_is_a_user_error(proof: Path, value: str) -> None:
    line = _one_error_line(_run("lean", "check", proof, "--standin", RULES, "--timeout", value))
    assert "timeout" in line, line


def test_infinite_temperature_is_a_user_error(tmp_path: Path) -> None:
    """`--temperature inf` sampled uniformly (logits / inf) and recorded inf as the run's setting."""
    line = _one_error_line(_run("prove", "whole", "--problems", "minif2f-valid", "--model", tmp_path,
                                "--temperature", "inf", "--standin", RULES, "--out", tmp_path / "run"))
    assert "policy.sampling.temperature" in line and "finite" in line, line


def test_seed_past_64_bits_is_a_user_error(tmp_path: Path, tiny: Path) -> None:
    huge = str(2**64)
    line = _one_error_line(_run("model", "init", "--preset", "tiny", "--out", tmp_path / "m", "--seed", huge))
    assert "--seed" in line and not (tmp_path / "m").exists(), line
    line = _one_error_line(_run("prove", "whole", "--problems", "minif2f-valid", "--model", tiny,
                                "--seed", huge, "--standin", RULES, "--out", tmp_path / "run"))
    assert "--seed" in line, line
    config = tmp_path / "run.toml"
    config.write_text(f"[policy.sampling]\nseed = {2**63}\n")
    line = _one_error_line(_run("--config", config, "config", "show"))
    assert "policy.sampling.seed" in line, line


def test_files_that_are_not_utf8(tmp_path: Path) -> None:
    config = tmp_path / "run.toml"
    config.write_bytes(b"[verifier]\ntimeout_s = 5 # \xff\n")
    line = _one_error_line(_run("--config", config, "data", "suites"))
    assert "run.toml: not UTF-8" in line, line
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_bytes(b'{"code": "theorem t : True := trivial"}\n\xfe\xff\n')
    line = _one_error_line(_run("model", "tokenizer", "--corpus", corpus, "--out", tmp_path / "tok"))
    assert "corpus.jsonl:2: not UTF-8" in line, line


def test_model_config_json_that_is_a_list(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("[1, 2]")
    line = _one_error_line(_run("model", "info", tmp_path / "m"))
    assert "expected a JSON object" in line and "got a list" in line, line
    line = _one_error_line(_run("prove", "whole", "--model", tmp_path / "m", "--standin", RULES,
                                "--out", tmp_path / "run"))
    assert "expected a JSON object" in line, line
    line = _one_error_line(_run("model", "convert", tmp_path / "m", "--out", tmp_path / "converted"))
    assert "config.json: expected a JSON object" in line and "got a list" in line, line


def test_generation_config_json_that_is_a_list(tmp_path: Path, tiny: Path) -> None:
    """transformers and vLLM read generation_config.json too; a list there was a traceback."""
    (tmp_path / "m").mkdir()
    for file in tiny.iterdir():
        (tmp_path / "m" / file.name).write_bytes(file.read_bytes())
    (tmp_path / "m" / "generation_config.json").write_text("[1]")
    line = _one_error_line(_run("prove", "whole", "--problems", "minif2f-valid", "--limit", "1", "--model",
                                tmp_path / "m", "--engine", "transformers", "--samples", "1", "--max-tokens", "2",
                                "--standin", RULES, "--out", tmp_path / "run"))
    assert "generation_config.json: expected a JSON object of generation settings, got a list" in line, line


def test_output_folder_not_writable_fails_before_work(tmp_path: Path, tiny: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    import policy.engines
    import prover.checkpoints

    def work(*args: object, **kwargs: object) -> None:
        raise AssertionError("work started before the output folder was checked")

    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with monkeypatch.context() as patch:   # no model is resolved or loaded: the folder is checked first
        patch.setattr(prover.checkpoints, "resolve_model", work)
        patch.setattr(policy.engines, "make_engine", work)
        line = _one_error_line(_run("prove", "whole", "--problems", "minif2f-valid", "--model", tiny,
                                    "--standin", RULES, "--out", blocker / "run"))
    assert "a_file" in line and "not writable" in line, line
    line = _one_error_line(_run("model", "init", "--preset", "tiny", "--out", blocker))
    assert "is a file" in line, line
    if os.geteuid() == 0:
        return   # root writes into read-only folders; the probe above covers the file case
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        line = _one_error_line(_run("lean", "check-set", tmp_path / "none.jsonl", "--problems",
                                    "minif2f-valid", "--static", "--out", locked / "out"))
        assert "not writable" in line, line
    finally:
        locked.chmod(0o755)


def test_checkpoint_with_a_shorter_context_than_max_model_len(tmp_path: Path, tiny: Path) -> None:
    """A model whose max_position_embeddings (64) is below policy.max_model_len (4096 by
    default): the run uses the model's context (README: `max_model_len`, capped by the
    checkpoint's `max_position_embeddings`) and records it, instead of the engine's ValueError
    traceback; a prompt too long for it is that problem's verdict."""
    import tomllib

    model = tmp_path / "short"
    model.mkdir()
    for file in tiny.iterdir():
        (model / file.name).write_bytes(file.read_bytes())
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps(config | {"max_position_embeddings": 64}))
    short = {"name": "short", "split": "test", "header": "import Mathlib\n", "informal_prefix": "",
             "formal_statement": "theorem short : True := by\n", "goal": ""}
    long = short | {"name": "long", "informal_prefix": "/-- " + "a long comment " * 20 + "-/\n",
                    "formal_statement": "theorem long : True := by\n"}
    problems = tmp_path / "two.jsonl"
    problems.write_text(json.dumps(long) + "\n" + json.dumps(short) + "\n")
    common = ["--problems", problems, "--model", model, "--engine", "transformers", "--max-tokens", "4",
              "--standin", RULES, "--json"]
    for command, out in ((["prove", "whole", "--samples", "1"], "run"), (["bench", "--n", "1"], "bench")):
        result = _run(*command, *common, "--out", tmp_path / out)
        assert result.exit_code in (EXIT_OK, EXIT_REJECTED), f"{command}: exit {result.exit_code}: {result.output[-3000:]}"
        records = [json.loads(line) for line in (tmp_path / out / "results.jsonl").read_text().splitlines()]
        outcomes = {r["id"]: r["outcome"] for r in records}
        assert outcomes["long"] == "not_checked:prompt_too_long" and outcomes["short"] != outcomes["long"], outcomes
        resolved = tomllib.loads((tmp_path / out / "config.resolved.toml").read_text())
        assert resolved["policy"]["max_model_len"] == 64, resolved["policy"]


def test_path_with_undecodable_bytes(tmp_path: Path) -> None:
    """A real process: the bytes come in through argv, as from a shell."""
    name = os.fsencode(tmp_path) + b"/pr\xff.jsonl"
    Path(os.fsdecode(name)).write_text("{}\n")
    done = subprocess.run([sys.executable, "-m", "prover.cli", b"data", b"inspect", name],
                          capture_output=True, env={**os.environ, "PYTHONPATH": str(REPO), "LC_ALL": "C.UTF-8"})
    err = done.stderr.decode("utf-8", "replace")
    assert done.returncode == EXIT_USAGE and err.count("\n") == 1, f"exit {done.returncode}: {err}"
    assert err.startswith("error: argument") and "pr\\xff.jsonl" in err and "UTF-8" in err, err


def test_a_bug_keeps_its_traceback_and_asks_for_a_report(monkeypatch: pytest.MonkeyPatch) -> None:
    import prover.cli.data

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(prover.cli.data, "load_suites", broken)
    result = _run("data", "suites")
    assert result.exit_code == 70, f"exit {result.exit_code}: {result.output}"
    assert "Traceback" in result.stderr and "RuntimeError: boom" in result.stderr, result.stderr
    assert "please report it" in result.stderr, result.stderr


def test_ctrl_c_exits_130(monkeypatch: pytest.MonkeyPatch) -> None:
    import prover.cli.data

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(prover.cli.data, "load_suites", interrupted)
    result = _run("data", "suites")
    assert result.exit_code == 130 and "Traceback" not in result.output, f"exit {result.exit_code}: {result.output}"


# --- item 4: exit codes ----------------------------------------------------------------------

def test_no_lean_is_exit_3_and_suggests_only_flags_the_command_has(tmp_path: Path, tiny: Path) -> None:
    from lean_env.toolchain import find_toolchain

    if find_toolchain().complete:
        pytest.skip("a Lean toolchain is installed here")
    line = _one_error_line(_run("prove", "whole", "--problems", "minif2f-valid", "--model", tiny,
                                "--out", tmp_path / "run"), EXIT_NOT_CHECKED)
    assert "no Lean toolchain" in line and "prover lean setup" in line and "--static" not in line, line
    proofs = tmp_path / "proofs.jsonl"
    proofs.write_text(json.dumps({"name": "b", "code": PROOF}) + "\n")
    problems = tmp_path / "problems.lean"
    problems.write_text("import Mathlib\n\ntheorem b : 1 = 1 := by\n  sorry\n")
    line = _one_error_line(_run("lean", "check-set", proofs, "--problems", problems), EXIT_NOT_CHECKED)
    assert "no Lean toolchain" in line and "--static" in line, line


def test_exit_code_for_outcomes() -> None:
    cases = {("accepted",): 0, ("accepted", "rejected:forbidden"): 1, ("timed_out",): 1,
             ("not_checked:no_code",): 1, ("rejected:lean_error", "not_checked:infrastructure"): 3,
             (): 1}
    got = {outcomes: exit_code_for(outcomes) for outcomes in cases}
    assert got == cases, got


def test_config_mistakes_are_2_and_infrastructure_is_3(tmp_path: Path, proof: Path) -> None:
    bad_table = tmp_path / "rules.json"
    bad_table.write_text('{"rules": [{"nope": 1}]}')
    line = _one_error_line(_run("lean", "check", proof, "--standin", bad_table))
    assert "verifier.standin_rules" in line and "unknown keys" in line, line
    config = tmp_path / "kimina.toml"
    config.write_text('[verifier]\nbackend = "kimina"\nkimina_url = "not a url"\n')
    line = _one_error_line(_run("--config", config, "lean", "check", proof))
    assert "verifier.kimina_url" in line, line
    config.write_text('[verifier]\nbackend = "kimina"\nkimina_url = "http://127.0.0.1:9"\n')   # nobody listens
    down = _run("--config", config, "lean", "check", proof)
    assert down.exit_code == EXIT_NOT_CHECKED and "NOT CHECKED" in down.stdout, (down.exit_code, down.output)
    crash = tmp_path / "crash.json"
    crash.write_text(json.dumps({"rules": [{"substring": "theorem a", "fault": "crash"}]}))
    result = _run("lean", "check", proof, "--standin", crash, "--json")
    verdict = json.loads(result.stdout)["verdict"]
    assert (result.exit_code, verdict["outcome"]) == (EXIT_NOT_CHECKED, "not_checked:infrastructure"), (
        result.exit_code, verdict)


# --- item 6: inputs people will give ---------------------------------------------------------

def test_version_and_short_help() -> None:
    import prover

    version = _run("--version")
    assert version.exit_code == 0 and version.stdout.strip() == f"prover {prover.__version__}", version.output
    for args in (["-h"], ["lean", "-h"], ["lean", "check", "-h"], ["config", "show", "-h"]):
        result = _run(*args)
        assert result.exit_code == 0 and "Usage: prover" in result.stdout, f"{args}: {result.output}"


def test_python_dash_m_prover_is_the_cli() -> None:
    done = subprocess.run([sys.executable, "-m", "prover", "--version"], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)
    assert done.returncode == 0 and done.stdout.startswith("prover "), (done.returncode, done.stdout, done.stderr)


def test_train_mistakes_are_one_line_before_any_work(tmp_path: Path) -> None:
    """Checked before Ray, engines or REPLs start: each is one line and exit 2."""
    model = tmp_path / "no-model"
    cases = [
        (["train"], "policy.sampling.n = 1"),
        (["train", "--set", "policy.sampling.n=4"], "no policy to train"),
        (["train", "--set", "policy.sampling.n=4", "--model", str(model)], "no problems to train on"),
        (["train", "--set", "training.steps"], "expected KEY=VALUE"),
        (["train", "--set", "grpo.policy_loss=ppo2"], "grpo.policy_loss"),
        (["train", "--set", "policy.sampling.n=4", "--set", "policy.sampling.max_tokens=4096"],
         "policy.sampling.max_tokens = 4096 leaves no room for a prompt within policy.max_model_len = 4096"),
        (["train", "--set", "policy.sampling.n=3", "--set", "rollout.prompts_per_step=5"],
         "5 x 3 = 15 sequences do not split"),
    ]
    for args, expected in cases:
        result = _run(*args)
        line = _one_error_line(result)
        assert result.exit_code == 2 and expected in line, (args, result.exit_code, line)


def test_config_show_lists_every_field_with_default_and_description(tmp_path: Path) -> None:
    from pydantic import BaseModel

    from prover.config import ProverConfig

    def leaves(model: type[BaseModel], prefix: str = "") -> list[str]:
        keys = []
        for name, field in model.model_fields.items():
            sub = field.annotation
            keys += (leaves(sub, f"{prefix}{name}.") if isinstance(sub, type) and issubclass(sub, BaseModel)
                     else [f"{prefix}{name}"])
        return keys

    result = _run("config", "show", "--json")
    assert result.exit_code == 0, result.output
    rows = {row["key"]: row for row in json.loads(result.stdout)["fields"]}
    assert list(rows) == leaves(ProverConfig), sorted(set(leaves(ProverConfig)) ^ set(rows))
    assert all(row["description"] for row in rows.values()), [k for k, r in rows.items() if not r["description"]]
    timeout = rows["verifier.timeout_s"]
    assert (timeout["default"], timeout["value"]) == (60.0, 60.0) and "DeepSeek-Prover-V1.5" in timeout["description"], timeout
    config = tmp_path / "run.toml"
    config.write_text("[verifier]\ntimeout_s = 5\n")
    resolved = {r["key"]: r for r in json.loads(_run("--config", config, "config", "show", "--json").stdout)["fields"]}
    assert (resolved["verifier.timeout_s"]["value"], resolved["verifier.timeout_s"]["default"]) == (5.0, 60.0), resolved["verifier.timeout_s"]
    human = _run("config", "show")
    assert human.exit_code == 0 and "verifier.timeout_s" in human.stdout and "policy.sampling.seed" in human.stdout, human.output


def test_split_that_contradicts_the_suite(shared_data: Path) -> None:
    line = _one_error_line(_run("data", "inspect", "minif2f-valid", "--split", "test"))
    assert "--split test contradicts suite minif2f-valid" in line, line
    same = _run("data", "inspect", "minif2f-valid", "--split", "valid", "--json")
    assert same.exit_code == 0 and json.loads(same.stdout)["problems"] == 244, same.output


def test_lean_check_theorem_picks_the_theorem(proof: Path) -> None:
    result = _run("lean", "check", proof, "--static", "--theorem", "b", "--json")
    assert result.exit_code == 0 and json.loads(result.stdout)["problem"] == "b", result.output
    first = _run("lean", "check", proof, "--static", "--json")
    assert json.loads(first.stdout)["problem"] == "a", first.output
    line = _one_error_line(_run("lean", "check", proof, "--static", "--theorem", "c"))
    assert "no theorem named 'c'" in line, line


def test_model_hub_id_offline_fails_fast(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Fast without a clock (no test may depend on the machine's speed): the hub client is only
    asked for its local cache, never to download, which is where its retries (~28 s) were."""
    import huggingface_hub

    asked: list[dict[str, object]] = []
    local_only = huggingface_hub.snapshot_download

    def snapshot_download(*args: object, **kwargs: object) -> str:
        asked.append(kwargs)
        return local_only(*args, **kwargs)   # type: ignore[arg-type]

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    for env in ({"HF_HUB_OFFLINE": "1"}, {"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": "http://127.0.0.1:9"}):
        asked.clear()
        result = _run("prove", "whole", "--model", "nobody-here/no-such-model", "--standin", RULES,
                      "--out", tmp_path / "run", env=env)
        line = _one_error_line(result)
        assert "--model nobody-here/no-such-model: not in the local Hugging Face cache" in line, line
        assert asked and all(call.get("local_files_only") for call in asked), f"{env}: hub calls {asked}"


def test_model_hub_id_on_a_hub_that_answers_an_error(tmp_path: Path) -> None:
    """A reachable hub or mirror (HF_ENDPOINT) that answers a bare 404: one line, not the hub
    client's LocalEntryNotFoundError traceback. A real process: the hub client reads
    HF_HUB_OFFLINE when imported."""
    import http.server
    import threading

    class NotFound(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_error(404)

        do_HEAD = do_GET

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), NotFound)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "0", "HF_ENDPOINT": endpoint,
           "HF_HOME": str(tmp_path / "hf"), "HF_HUB_DISABLE_TELEMETRY": "1"}
    try:
        done = subprocess.run([sys.executable, "-m", "prover.cli", "prove", "whole", "--model", "someone/nothing",
                               "--standin", str(RULES), "--out", str(tmp_path / "run")],
                              capture_output=True, text=True, env=env, timeout=120, cwd=tmp_path)
    finally:
        server.shutdown()
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == EXIT_USAGE and len(lines) == 1, f"exit {done.returncode}: {done.stderr[-3000:]}"
    assert lines[0].startswith(f"error: --model someone/nothing: no such folder, and the hub ({endpoint}) says:") \
        and "404" in lines[0], lines[0]


def test_model_hub_id_from_the_cache(tmp_path: Path, tiny: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    from prover.checkpoints import resolve_model

    repo = tmp_path / "hub" / "models--someone--tiny"
    snapshot = repo / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    for file in tiny.iterdir():
        (snapshot / file.name).symlink_to(file)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert resolve_model("someone/tiny") == snapshot, list(snapshot.iterdir())
    assert resolve_model(str(tiny)) == tiny


@pytest.mark.parametrize("stop", ["run", "sft", "train", "iterate"])
def test_every_jobs_interruption_is_its_own_line_and_exit_130(stop: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Ctrl-C/SIGTERM of any job reaches the CLI edge as one kind (prover.runs.Interrupted): its
    line (what was kept, how to continue) on stderr, no 'error:' and no traceback, exit 130."""
    from prover.cli import _handle
    from prover.iterate import IterateInterrupted
    from prover.rl.sft import SFTInterrupted
    from prover.rl.train import TrainInterrupted
    from prover.runs import RunInterrupted

    exc = {"run": RunInterrupted(3, 40, Path("runs/x")), "sft": SFTInterrupted(7, Path("runs/s/step-7")),
           "train": TrainInterrupted(5, None), "iterate": IterateInterrupted(2, "sft", "step 3 of 10")}[stop]
    code = _handle(exc)
    err = capsys.readouterr().err
    assert code == 130, (code, err)
    assert err.strip() == str(exc), err
    assert "Traceback" not in err and "error" not in err.lower(), err
