"""Problem-set loaders: real data from ../shared/data, and every malformed input we can think of."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from prover.problems import (
    Problem,
    ProblemSetError,
    duplicate_names,
    load_jsonl,
    load_lean,
    load_problems,
    resolve_source,
    select,
    summarize,
)

HEADER = "import Mathlib\nimport Aesop\n\nset_option maxHeartbeats 0\n\nopen BigOperators Real Nat Topology Rat\n\n"
GOOD = {"name": "t1", "split": "valid", "header": HEADER, "informal_prefix": "/-- one -/\n",
        "formal_statement": "theorem t1 (a b : ℕ) : a + b = b + a := by\n", "goal": "⊢ a + b = b + a"}


def write_jsonl(path: Path, rows: list) -> Path:
    lines = [r if isinstance(r, str) else json.dumps(r, ensure_ascii=False) for r in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_minif2f_counts(shared_data: Path) -> None:
    problems = load_problems(str(shared_data / "minif2f.jsonl"))
    summary = summarize(problems)
    assert summary["problems"] == 488, summary
    assert summary["splits"] == {"test": 244, "valid": 244}, summary
    assert summary["duplicate_names"] == {}, summary
    first = problems[0]
    assert first.name == "amc12a_2019_p21" and first.split == "valid", first
    assert first.lean_prompt().startswith("import Mathlib\nimport Aesop"), first.lean_prompt()[:60]
    assert first.origin == "minif2f.jsonl:1", first.origin


def test_suites_resolve_to_shared_copy_with_pinned_hash(shared_data: Path) -> None:
    for suite, split, count in [("minif2f-valid", "valid", 244), ("minif2f-test", "test", 244),
                                ("proofnet-valid", "valid", 185), ("proofnet-test", "test", 186)]:
        problems = load_problems(suite)
        assert len(problems) == count, (suite, len(problems))
        assert {p.split for p in problems} == {split}, suite
    resolved = resolve_source("minif2f-valid")
    assert resolved.kind == "file" and resolved.sha256 == resolved.suite.sha256, resolved


def test_proofnet_duplicate_names_are_reported_and_get_unique_ids(shared_data: Path) -> None:
    problems = load_problems(str(shared_data / "proofnet.jsonl"))
    dups = duplicate_names(problems)
    assert len(dups) == 19, sorted(dups)
    assert dups["exercise_3_3"] == ["proofnet.jsonl:11", "proofnet.jsonl:41"], dups["exercise_3_3"]
    ids = [p.id for p in problems]
    assert len(set(ids)) == len(ids) == 371, len(set(ids))
    assert "exercise_3_3#2" in ids
    # A name selects all its problems; an id selects one.
    assert len(select(problems, names=["exercise_3_3"])) == 2
    assert [p.origin for p in select(problems, names=["exercise_3_3#2"])] == ["proofnet.jsonl:41"]


def test_def_statements_load(shared_data: Path) -> None:
    (problem,) = load_problems(str(shared_data / "proofnet.jsonl"), names=["exercise_2_8_6"])
    assert problem.formal_statement.startswith("noncomputable def exercise_2_8_6"), problem.formal_statement


def test_selection_split_names_limit(tmp_path: Path) -> None:
    rows = [dict(GOOD, name=f"t{i}", formal_statement=f"theorem t{i} : True := by\n",
                 split="valid" if i % 2 else "test") for i in range(1, 7)]
    path = write_jsonl(tmp_path / "set.jsonl", rows)
    assert [p.name for p in load_problems(str(path), split="valid")] == ["t1", "t3", "t5"]
    assert [p.name for p in load_problems(str(path), split="valid", limit=2)] == ["t1", "t3"]
    assert [p.name for p in load_problems(str(path), names=["t6", "t2"])] == ["t2", "t6"]
    with pytest.raises(ProblemSetError, match=r"no problems in split 'train' \(splits: test, valid\)"):
        load_problems(str(path), split="train")
    with pytest.raises(ProblemSetError, match="unknown problem name\\(s\\): nope"):
        load_problems(str(path), names=["nope"])
    with pytest.raises(ProblemSetError, match="--limit must be at least 1, got 0"):
        load_problems(str(path), limit=0)


MALFORMED = [
    ("missing formal_statement", [GOOD, GOOD | {"name": "t2", "formal_statement": "theorem t2 : True := by\n"}, {k: v for k, v in GOOD.items() if k != "formal_statement"}],
     "bad.jsonl:3: missing field 'formal_statement'"),
    ("missing name", [{k: v for k, v in GOOD.items() if k != "name"}], "bad.jsonl:1: missing field 'name'"),
    ("missing header", [{k: v for k, v in GOOD.items() if k != "header"}], "bad.jsonl:1: missing field 'header'"),
    ("null field", [GOOD | {"formal_statement": None}], "bad.jsonl:1: missing field 'formal_statement'"),
    ("number field", [GOOD | {"split": 3}], "bad.jsonl:1: field 'split' must be a string, got int '3'"),
    ("list field", [GOOD | {"goal": ["a"]}], "bad.jsonl:1: field 'goal' must be a string, got list"),
    ("invalid json", [GOOD, '{"name": "x", '], "bad.jsonl:2: invalid JSON"),
    ("not an object", ["[1, 2]"], "bad.jsonl:1: expected a JSON object, got list"),
    ("empty name", [GOOD | {"name": "  "}], "bad.jsonl:1: field 'name' must be a non-empty name"),
    ("name with space", [GOOD | {"name": "a b"}], "bad.jsonl:1: field 'name' must be a non-empty name"),
    ("empty statement", [GOOD | {"formal_statement": "  \n"}], "bad.jsonl:1: field 'formal_statement' is empty"),
    ("statement names other theorem", [GOOD | {"name": "t9"}],
     "bad.jsonl:1: field 'formal_statement' declares 't1', expected theorem 't9'"),
    ("statement declares nothing", [GOOD | {"formal_statement": "example : True := by\n"}],
     "bad.jsonl:1: field 'formal_statement' declares no theorem, lemma or def"),
    ("import in statement", [GOOD | {"formal_statement": "import Foo\ntheorem t1 : True := by\n"}],
     "bad.jsonl:1: field 'formal_statement' contains an import"),
    ("empty split", [GOOD | {"split": ""}], "bad.jsonl:1: field 'split' is empty"),
    ("only blank lines", ["", "  "], "bad.jsonl: no problems in file"),
]


@pytest.mark.parametrize(("case", "rows", "message"), MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_jsonl(tmp_path: Path, case: str, rows: list, message: str) -> None:
    path = write_jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(ProblemSetError) as info:
        load_jsonl(path)
    assert str(info.value).startswith(message), f"{case}: got {info.value}"
    assert "\n" not in str(info.value), f"{case}: message is not one line: {info.value!r}"


def test_unreadable_inputs(tmp_path: Path) -> None:
    with pytest.raises(ProblemSetError, match="no such file"):
        load_jsonl(tmp_path / "missing.jsonl")
    with pytest.raises(ProblemSetError, match="is a directory"):
        load_jsonl(tmp_path)
    binary = tmp_path / "bin.jsonl"
    binary.write_bytes(b'{"name": "\xff\xfe"}\n')
    with pytest.raises(ProblemSetError, match="bin.jsonl: not UTF-8 text"):
        load_jsonl(binary)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(ProblemSetError, match="empty.jsonl: no problems in file"):
        load_jsonl(empty)


def test_bom_and_blank_lines_are_tolerated(tmp_path: Path) -> None:
    path = tmp_path / "bom.jsonl"
    path.write_text("\ufeff" + json.dumps(GOOD) + "\n\n\n" + json.dumps(GOOD | {
        "name": "t2", "formal_statement": "theorem t2 : True := by\n"}) + "\n", encoding="utf-8")
    problems = load_jsonl(path)
    assert [(p.name, p.origin) for p in problems] == [("t1", "bom.jsonl:1"), ("t2", "bom.jsonl:4")]


def test_unknown_source_lists_suites() -> None:
    with pytest.raises(ProblemSetError, match=r"not a known suite \(known: minif2f-test, minif2f-valid"):
        load_problems("minif2f-train")


def test_suite_with_other_copy_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_jsonl(tmp_path / "minif2f.jsonl", [GOOD])
    monkeypatch.setenv("PROVER_DATA_DIR", str(tmp_path))
    with pytest.raises(ProblemSetError, match="but the suite pins d6654c88476f"):
        load_problems("minif2f-valid")


LEAN_FILE = """import Mathlib
import Aesop

set_option maxHeartbeats 400000

open Nat Real

/-- The sum is commutative. -/
theorem add_comm' (a b : ℕ) : a + b = b + a := by
  sorry

-- a plain comment between problems
lemma two_eq : (2 : ℕ) = 1 + 1 := sorry

/-- With a `:=` inside: -/
theorem let_stmt : (let x := 2; x) = 2 := by sorry
"""


def test_lean_file_loader(tmp_path: Path) -> None:
    path = tmp_path / "mine.lean"
    path.write_text(LEAN_FILE, encoding="utf-8")
    problems = load_lean(path)
    assert [p.name for p in problems] == ["add_comm'", "two_eq", "let_stmt"]
    header = "import Mathlib\nimport Aesop\n\nset_option maxHeartbeats 400000\n\nopen Nat Real\n\n"
    assert all(p.header == header for p in problems), repr(problems[0].header)
    assert problems[0].informal_prefix == "/-- The sum is commutative. -/\n", repr(problems[0].informal_prefix)
    assert problems[0].formal_statement == "theorem add_comm' (a b : ℕ) : a + b = b + a := by\n", \
        repr(problems[0].formal_statement)
    assert problems[1].formal_statement == "lemma two_eq : (2 : ℕ) = 1 + 1 := by\n", repr(problems[1].formal_statement)
    assert problems[1].informal_prefix == "", repr(problems[1].informal_prefix)
    assert problems[2].formal_statement == "theorem let_stmt : (let x := 2; x) = 2 := by\n"
    assert problems[2].informal_prefix == "/-- With a `:=` inside: -/\n"
    assert {p.split for p in problems} == {"mine"} and problems[1].origin == "mine.lean:13", problems[1].origin
    # the same file through the generic entry point
    assert [p.name for p in load_problems(str(path), names=["two_eq"])] == ["two_eq"]


@pytest.mark.parametrize(("text", "message"), [
    ("import Mathlib\n\ntheorem t : True := by\n  trivial\n", "x.lean:3: theorem 't' must end in `:= by sorry`"),
    ("import Mathlib\n-- nothing here\n", "x.lean: no `theorem`, `lemma` or `def` declarations found"),
    ("theorem t : True := by sorry\n", "x.lean: no header before the first theorem"),
])
def test_malformed_lean_file(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "x.lean"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ProblemSetError) as info:
        load_lean(path)
    assert str(info.value).startswith(message), str(info.value)


def test_problem_is_frozen() -> None:
    problem = Problem(name="a", split="s", header="h", formal_statement="theorem a : True := by\n")
    with pytest.raises(Exception, match="frozen"):
        problem.name = "b"  # type: ignore[misc]


def test_hub_loader_reads_a_local_dataset_with_the_same_columns(tmp_path: Path) -> None:
    """The real `datasets.load_dataset` code path, on a dataset folder written here (no network)."""
    datasets = pytest.importorskip("datasets")
    folder = tmp_path / "hubset"
    datasets.DatasetDict({
        "valid": datasets.Dataset.from_list([GOOD]),
        "test": datasets.Dataset.from_list([GOOD | {"name": "t2", "split": "test",
                                                    "formal_statement": "theorem t2 : True := by\n"}]),
    }).save_to_disk(str(folder))
    # load_dataset reads a folder of data files; write them in a format it detects.
    data_dir = tmp_path / "hubfiles"
    data_dir.mkdir()
    for split in ("valid", "test"):
        datasets.load_from_disk(str(folder))[split].to_json(str(data_dir / f"{split}.jsonl"), force_ascii=False)
    problems = load_problems(f"hf:{data_dir}")
    assert sorted((p.name, p.split) for p in problems) == [("t1", "valid"), ("t2", "test")], problems
    assert problems[0].origin.startswith(f"hf:{data_dir}["), problems[0].origin
    only_test = load_problems(f"hf:{data_dir}", split="test")
    assert [p.name for p in only_test] == ["t2"]
    with pytest.raises(ProblemSetError, match="cannot load dataset"):
        load_problems(f"hf:{tmp_path / 'nothing-here'}")


def test_lean_file_is_read_as_lean_reads_it(tmp_path: Path) -> None:
    """Commented-out theorems are comments (a regex over lines saw them), a `theorem` word in a
    string is a string, helper definitions are context for the problems after them."""
    path = tmp_path / "lexed.lean"
    path.write_text(
        "import Mathlib\n\n"
        "/- theorem old (n : ℕ) : n = n := by sorry -/\n"
        "-- theorem also_old : True := by sorry\n"
        "def f (n : ℕ) : ℕ := n + 1\n\n"
        "theorem uses_f : f 1 = 2 := by sorry\n\n"
        "def g (n : ℕ) : String := \"theorem fake : False := by sorry\"\n\n"
        "theorem uses_g : g 0 = \"theorem fake : False := by sorry\" := by\n  sorry\n",
        encoding="utf-8")
    problems = load_lean(path)
    assert [p.name for p in problems] == ["uses_f", "uses_g"], problems
    assert "def f" in problems[0].header and "def g" not in problems[0].header, problems[0].header
    assert "def f" in problems[1].header and "def g" in problems[1].header, problems[1].header
    assert problems[1].formal_statement == \
        'theorem uses_g : g 0 = "theorem fake : False := by sorry" := by\n', problems[1]


def test_lean_file_problem_inside_a_namespace_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "ns.lean"
    path.write_text("import Mathlib\n\nnamespace Foo\ntheorem t : True := by sorry\nend Foo\n",
                    encoding="utf-8")
    with pytest.raises(ProblemSetError) as info:
        load_lean(path)
    assert str(info.value).startswith("ns.lean:4: theorem 't' is inside `namespace Foo`"), str(info.value)
