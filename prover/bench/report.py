"""What a bench run leaves for people: report.md (pass@k table with standard errors, the
reproducibility manifest, per-problem outcomes) and passk.png (pass@k against k with error
bars), and the comparison of two runs (`prover bench compare`).

Everything here reads the run folder's own files (summary.json, results.jsonl), so a report
can be rebuilt, and two runs compared, without the model or Lean.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from prover.bench.passk import pass_at_k
from prover.errors import UserError

REPORT_NAME = "report.md"
PLOT_NAME = "passk.png"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def write_plot(summary: dict[str, Any], path: Path) -> str | None:
    """passk.png: pass@k against k (log axis) with one-SE error bars. Returns why it was not
    written (matplotlib missing), else None."""
    try:
        import matplotlib

        matplotlib.use("Agg")   # files only, no display
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install matplotlib)"
    rows = summary["pass_at_k"]
    ks = [r["k"] for r in rows]
    fig, ax = plt.subplots(figsize=(5, 3.5), dpi=120)
    try:
        ax.errorbar(ks, [100 * r["mean"] for r in rows], yerr=[100 * (r["se"] or 0.0) for r in rows],
                    marker="o", capsize=4)
        if len(ks) > 1:
            ax.set_xscale("log", base=2)
        ax.set_xticks(ks, [str(k) for k in ks])
        ax.set_xlabel("k (samples)")
        ax.set_ylabel("pass@k (%)")
        top = max((100 * (r["mean"] + (r["se"] or 0.0)) for r in rows), default=0.0)
        ax.set_ylim(0, min(100.0, max(10.0, 1.15 * top)))
        manifest = summary.get("manifest", {})
        title = f"{manifest.get('dataset', {}).get('name', '')}: {summary.get('done')} problems, n={summary.get('n')}"
        if summary.get("backend"):
            title += f"\nverdicts from the {summary['backend']}"
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(path)
    finally:
        plt.close(fig)
    return None


def render_report(summary: dict[str, Any], records: Sequence[dict[str, Any]]) -> str:
    """report.md's text."""
    manifest = summary.get("manifest", {})
    dataset, model, lean = manifest.get("dataset", {}), manifest.get("model", {}), manifest.get("lean", {})
    verifier, engine, template = manifest.get("verifier", {}), manifest.get("engine", {}), manifest.get("template", {})
    lines = [f"# prover bench: {dataset.get('name')}", ""]
    if summary.get("backend"):
        lines += [f"> **Verdicts from the {summary['backend']}: a test double, not Lean. These numbers say "
                  "nothing about proofs.**", ""]
    if not summary.get("complete"):
        lines += [f"> **Partial run: {summary.get('done')}/{summary.get('total')} problems done** "
                  "(continue with `--resume`).", ""]
    lines += [f"{summary.get('done')} problems, n = {summary.get('n')} samples each, method `{manifest.get('method')}`, "
              f"{summary.get('proved')} proved; checked by {summary.get('checked_by')}; {summary.get('seconds')} s.", "",
              "| k | pass@k | standard error | problems |", "|---|---|---|---|"]
    lines += [f"| {r['k']} | {_pct(r['mean'])} | {_pct(r['se'])} | {r['problems']} |" for r in summary["pass_at_k"]]
    lines += ["", "Unbiased estimator of Chen et al. (2021) from n samples per problem, averaged over problems; "
              "standard error across problems. A problem whose prompt did not fit counts as failed.", ""]
    weights = model.get("weights", {})
    versions = engine.get("versions", {})
    sampling = manifest.get("sampling", {})
    lines += ["## Reproducibility manifest", "",
              f"- model: `{model.get('path')}`, weights sha256 `{weights.get('sha256')}` "
              f"({len(weights.get('files', {}))} safetensors files); tokenizer `{model.get('tokenizer')}`, files sha256 "
              f"`{model.get('tokenizer_files', {}).get('sha256')}` (vocabulary, special tokens, chat template)",
              f"- template: `{template.get('name')}`, text sha256 `{template.get('sha256')}`",
              "- sampling: " + ", ".join(f"{k} = {json.dumps(v)}" for k, v in sampling.items()),
              "- method options: " + ", ".join(f"{k} = {json.dumps(v)}" for k, v in
                                               manifest.get("method_options", {}).items() if v is not None),
              f"- engine: {engine.get('name')} (dtype {engine.get('dtype')}, max_model_len {engine.get('max_model_len')}); "
              f"vllm {versions.get('vllm')}, torch {versions.get('torch')}, transformers {versions.get('transformers')}",
              f"- Lean: {lean.get('toolchain')}, Mathlib {lean.get('mathlib')}, REPL {lean.get('repl')}; "
              f"verdicts by {lean.get('checked_by')}",
              f"- verifier: backend {verifier.get('backend')}, timeout {verifier.get('timeout_s')} s per proof, "
              f"allowed axioms {', '.join(verifier.get('allowed_axioms', []))}, final judge {verifier.get('final_judge')} "
              f"({'on' if verifier.get('final_judge_active') else 'off'} in this run)"
              + (f", stand-in rules `{verifier.get('standin_rules')}` (sha256 `{verifier.get('standin_rules_sha256')}`)"
                 if verifier.get("standin") else ""),
              f"- dataset: {dataset.get('name')}, file `{dataset.get('file')}`, sha256 `{dataset.get('sha256')}`, "
              f"split {dataset.get('split')}, limit {dataset.get('limit')}, {dataset.get('problems')} problems",
              f"- software: prover {manifest.get('software', {}).get('prover')}, commit "
              f"{manifest.get('software', {}).get('commit')}, Python {manifest.get('software', {}).get('python')}",
              "", "Template text (placeholders in braces):", "", "~~~~", template.get("text", ""), "~~~~", ""]
    for header in lean.get("headers", []):
        lines += [f"Header (sha256 `{header['sha256']}`, {header['problems']} problems):", "", "~~~~lean",
                  header["text"].rstrip("\n"), "~~~~", ""]
    lines += ["## Problems", "", "| problem | outcome | correct / samples |", "|---|---|---|"]
    lines += [f"| {r['id']} | {r['outcome']} | {r.get('correct', 0)} / {r.get('samples', len(r['attempts']))} |"
              for r in records]
    if summary.get("plot_missing"):
        lines += ["", f"passk.png not written: {summary['plot_missing']}."]
    return "\n".join(lines) + "\n"


def write_report(out: Path, summary: dict[str, Any], records: Sequence[dict[str, Any]]) -> None:
    """report.md and passk.png in the run folder `out`."""
    missing = write_plot(summary, out / PLOT_NAME)
    summary = summary | ({"plot_missing": missing} if missing else {})
    (out / REPORT_NAME).write_text(render_report(summary, records), encoding="utf-8")


# -- compare two runs ----------------------------------------------------------------------------

def read_run(folder: Path) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """A bench run's summary and its records by problem id."""
    try:
        summary = json.loads((folder / "summary.json").read_text(encoding="utf-8"))
        records = [json.loads(line) for line in (folder / "results.jsonl").read_text(encoding="utf-8").splitlines()
                   if line.strip()]
    except (OSError, ValueError) as exc:
        raise UserError(f"{folder}: not a bench run folder ({exc})") from None
    if "pass_at_k" not in summary:
        raise UserError(f"{folder}: summary.json has no pass_at_k (not a `prover bench` run)")
    return summary, {r["id"]: r for r in records}


def compare_runs(first: Path, second: Path) -> dict[str, Any]:
    """Per problem and per k, B - A over the problems both runs scored: pass@k of each and their
    difference, with the paired standard error of the mean difference."""
    (sum_a, rec_a), (sum_b, rec_b) = read_run(first), read_run(second)
    ks = sorted({r["k"] for r in sum_a["pass_at_k"]} & {r["k"] for r in sum_b["pass_at_k"]})
    common = [pid for pid in rec_a if pid in rec_b]

    def value(record: dict[str, Any], k: int) -> float | None:
        n, c = record.get("samples", 0), record.get("correct", 0)
        return pass_at_k(n, c, k) if k <= n else None

    problems = []
    for pid in common:
        a, b = rec_a[pid], rec_b[pid]
        row: dict[str, Any] = {"id": pid, "a": f"{a.get('correct', 0)}/{a.get('samples', 0)}",
                               "b": f"{b.get('correct', 0)}/{b.get('samples', 0)}", "pass_at_k": {}}
        for k in ks:
            va, vb = value(a, k), value(b, k)
            row["pass_at_k"][str(k)] = {"a": va, "b": vb,
                                        "diff": None if va is None or vb is None else vb - va}
        row["changed"] = any(v["diff"] for v in row["pass_at_k"].values())
        problems.append(row)
    per_k = []
    for k in ks:
        diffs = [p["pass_at_k"][str(k)]["diff"] for p in problems if p["pass_at_k"][str(k)]["diff"] is not None]
        mean_a = _mean([p["pass_at_k"][str(k)]["a"] for p in problems])
        mean_b = _mean([p["pass_at_k"][str(k)]["b"] for p in problems])
        mean_d = _mean(diffs)
        se = (math.sqrt(sum((d - mean_d) ** 2 for d in diffs) / (len(diffs) - 1) / len(diffs))
              if len(diffs) > 1 and mean_d is not None else None)
        per_k.append({"k": k, "a": mean_a, "b": mean_b, "diff": mean_d, "se": se, "problems": len(diffs)})
    return {"a": str(first), "b": str(second), "common_problems": len(common),
            "only_a": [pid for pid in rec_a if pid not in rec_b], "only_b": [pid for pid in rec_b if pid not in rec_a],
            "standin": {"a": sum_a.get("backend"), "b": sum_b.get("backend")},
            "pass_at_k": per_k, "problems": problems}


def _mean(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None
