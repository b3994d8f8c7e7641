"""Reading a run's proportions back, as a table and as a plot (matplotlib, optional)."""
from __future__ import annotations

from pathlib import Path

from .trainer import read_log


def proportions_history(run_dir) -> tuple[list[str], list[dict]]:
    """``(domains, [{"step", "proportions", "losses"?}, ...])`` from a run's log (the start, then every update)."""
    domains, rows = [], []
    for r in read_log(run_dir):
        if r.get("event") in ("start", "resume") and not rows:
            domains = r.get("domains", list(r.get("reference") or {}))
            rows.append({"step": r["step"], "proportions": r["proportions"]})
        elif r.get("event") == "proportions":
            domains = r["domains"]
            rows.append({"step": r["step"], "proportions": r["proportions"], "losses": r["losses"]})
    return domains, rows


def plot_proportions(series: dict[str, tuple[list[str], list[dict]]], path, title: str = "Domain proportions") -> Path:
    """One panel per run (``series[label] = proportions_history(...)``), one line per domain."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(series), figsize=(4.2 * len(series), 3.4), squeeze=False, sharey=True)
    for ax, (label, (domains, rows)) in zip(axes[0], series.items()):
        steps = [r["step"] for r in rows]
        for i, d in enumerate(domains):
            ax.plot(steps, [r["proportions"][i] for r in rows], marker="o", ms=3, label=d)
        ax.set_title(label, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("proportion of samples")
    axes[0][0].legend(fontsize=8)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


__all__ = ["plot_proportions", "proportions_history"]
