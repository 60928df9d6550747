"""The stand-in REPL itself: rule-table validation and the protocol corners the client
tests do not reach (gc, file mode, parse errors, fault budgets shared by processes)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from lean_env import standin
from lean_env.errors import ReplProtocolError
from lean_env.protocol import CommandResponse, ErrorReply
from lean_env.repl import ReplProcess
from lean_env.standin.rules import RuleTableError, load_rules
from tests.lean_env.conftest import RULES_DIR

pytestmark = pytest.mark.usefixtures("no_leaked_processes")


def _repl(argv: list[str]) -> ReplProcess:
    return ReplProcess(argv, memory_limit_mb=None, checked_by=standin.CHECKED_BY)


@pytest.mark.parametrize("rules_file", sorted(p.name for p in RULES_DIR.glob("*.json")))
def test_shipped_rule_tables_load(rules_file):
    table = load_rules(RULES_DIR / rules_file)
    assert table.rules and all(r.pattern.pattern for r in table.rules), table


@pytest.mark.parametrize(("table", "message"), [
    ({"rules": [{"substring": "a", "regex": "b"}]}, "exactly one of 'substring' and 'regex'"),
    ({"rules": [{"substring": "a", "fault": "explode"}]}, "unknown fault 'explode'"),
    ({"rules": [{"substring": "a", "sleep": 1}]}, "unknown keys \\['sleep'\\]"),
    ({"rules": [{"regex": "("}]}, "bad pattern"),
    ({"rules": [{"substring": "a", "grow_mb": -1}]}, "grow_mb: expected a non-negative integer"),
    ({"rules": [{"substring": "a", "messages": [{"severity": "fatal", "data": "x"}]}]},
     "a message needs severity"),
    ({"header_import_s": 0, "rule": []}, "expected an object with"),
])
def test_bad_rule_tables_are_one_line_errors(tmp_path: Path, table, message):
    path = tmp_path / "rules.json"
    path.write_text(json.dumps(table))
    with pytest.raises(RuleTableError, match=message) as info:
        load_rules(path)
    assert "\n" not in str(info.value), str(info.value)
    # The process refuses to start the same way: exit 2, the message on stderr.
    done = subprocess.run(standin.command(path), input="", capture_output=True, text=True,
                          timeout=30)
    assert done.returncode == 2 and message.replace("\\", "") in done.stderr, done


def test_protocol_corners(make_standin, tmp_path: Path):
    sim = make_standin({"rules": [{"regex": r"theorem\s+re_\d+", "axioms": ["Classical.choice"]}]})
    lean_file = tmp_path / "File.lean"
    lean_file.write_text("import Mathlib\ntheorem f : True := trivial\n#print axioms f\n")
    with _repl(sim.argv) as repl:
        env = repl.command("import Mathlib", timeout_s=5)
        assert env == CommandResponse(env=0), env
        dropped = repl.command("theorem g : True := trivial", env=0, timeout_s=5, gc=True)
        assert isinstance(dropped, CommandResponse) and dropped.env is None, dropped
        traced = repl.command("theorem h : True := trivial", env=0, timeout_s=5, allTactics=True)
        assert isinstance(traced, CommandResponse) and "tactics" in traced.raw, traced.raw
        matched = repl.command("theorem re_12 : True := trivial\n#print axioms re_12", env=0,
                               timeout_s=5)
        assert isinstance(matched, CommandResponse)
        assert matched.messages[0].text == "'re_12' depends on axioms: [Classical.choice]", matched
        from_file = repl.request({"path": str(lean_file)}, timeout_s=5)
        assert from_file["messages"][0]["data"].startswith("'f' depends on axioms"), from_file
        sorry = repl.command("theorem s : 1 = 1 := by sorry", env=0, timeout_s=5)
        assert isinstance(sorry, CommandResponse) and sorry.sorries[0].proof_state is not None
        step = repl.tactic("sorry", sorry.sorries[0].proof_state, timeout_s=5)
        assert step.proof_status == "Incomplete: contains sorry", step
        assert repl.request({"nonsense": 1}, timeout_s=5)["message"].startswith("Could not parse")
        assert repl.command("x", env=42, timeout_s=5) == ErrorReply("Unknown environment.")


def test_max_fires_is_shared_by_processes_and_events_are_logged(make_standin):
    sim = make_standin({"header_import_s": 0.01,
                        "rules": [{"name": "once", "substring": "flaky", "fault": "garbage",
                                   "max_fires": 1}]})
    outcomes = []
    for _ in range(3):
        with _repl(sim.argv) as repl:
            repl.command("import Mathlib", timeout_s=5)
            try:
                outcomes.append(type(repl.command("theorem flaky : True := trivial", env=0,
                                                  timeout_s=5)).__name__)
            except ReplProtocolError as exc:  # the first process's garbage reply
                outcomes.append(type(exc).__name__)
    assert outcomes == ["ReplProtocolError", "CommandResponse", "CommandResponse"], outcomes
    assert [e["event"] for e in sim.events()] == [
        "import", "command", "fault", "import", "command", "import", "command"], sim.events()
    assert len(sim.per_pid("import")) == 3
