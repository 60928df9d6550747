"""`prover train report`: a run's metrics.jsonl as curves in one PNG (matplotlib)."""

from __future__ import annotations

import math
from pathlib import Path

from prover.errors import UserError
from prover.rl.metrics import METRICS_NAME, read_metrics

CURVES_NAME = "curves.png"   # the default PNG in a run folder

# (title, metric keys) per panel; a panel whose keys never appear is left out.
PANELS = (
    ("reward", ("reward_mean", "accepted_share")),
    ("loss", ("loss", "eval_loss", "mtp_loss")),
    ("response length (tokens)", ("response_length_mean", "response_length_max")),
    ("entropy / KL", ("entropy", "kl_k3", "mismatch_k3")),
    ("clip and IS weights", ("clip_fraction", "ratio_mean", "is_weight_mean", "is_masked_share",
                             "is_truncated_share")),
    ("expert load (max violation)", ("expert_maxvio_mean", "expert_max_violation")),
    ("time per step (s)", ("time_generate_s", "time_verify_s", "time_learn_s", "time_weight_sync_s",
                           "time_idle_s")),
    ("learning rate", ("learning_rate", "lr")),
)


def plot_curves(run_dir: Path, png: Path) -> Path:
    """Write `png` with one panel per metric family found in run_dir/metrics.jsonl."""
    path = run_dir / METRICS_NAME
    if not path.is_file():
        raise UserError(f"{run_dir}: no {METRICS_NAME} (not a `prover train` or `prover sft` run folder)")
    rows = read_metrics(path)
    if not rows:
        raise UserError(f"{path}: no rows yet")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UserError("prover train report needs matplotlib (pip install matplotlib)") from None
    panels = []
    for title, keys in PANELS:
        series = {}
        for key in keys:
            points = [(r["step"], float(r[key])) for r in rows
                      if isinstance(r.get(key), int | float) and math.isfinite(float(r[key]))]
            if points:
                series[key] = points
        if series:
            panels.append((title, series))
    cols = 2
    lines = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(lines, cols, figsize=(11, 3.2 * lines), squeeze=False)
    for ax, (title, series) in zip(axes.flat, panels, strict=False):
        for key, points in series.items():
            ax.plot([p[0] for p in points], [p[1] for p in points], label=key, linewidth=1.2)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step", fontsize=8)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle(f"{run_dir.name}: {len(rows)} metrics rows", fontsize=11)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return png
