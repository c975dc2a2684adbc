"""The report's matplotlib figures, each returned as a base64 PNG (embedded as a data: URI).

Inputs are plain data: metrics rows as written by `Tracker` ({"step", metric: value, ...}),
and the dicts of eval.json. PNG encoding is shared with the feedback-quality report (report_html.py).
"""

from __future__ import annotations

from alignloop import metric_names as M
from alignloop.report_html import png, pyplot

Series = tuple[list[float], list[float]]


def short(source: str) -> str:
    """A reward source's display name (`metric_names.source_name`: a reward-model folder by its
    base name), also inside a score metric (`score//runs/x/reward`, as older runs logged it ->
    `score/reward`)."""
    if source.startswith(M.SCORE_PREFIX):
        return M.score(source[len(M.SCORE_PREFIX):])
    return M.source_name(source)


def series(rows: list[dict], key: str) -> Series:
    """(steps, values) of one metric over the rows that logged it (numbers only)."""
    pts = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float)) and not isinstance(r.get(key), bool)]
    return [p[0] for p in pts], [p[1] for p in pts]


def curves(rows: list[dict], panels: list[tuple[str, list[str], str]], ncols: int = 3, xlabel: str = "step") -> str | None:
    """A grid of line plots, one panel per (title, metric keys, y label); panels whose
    metrics were never logged are left out. None when no panel has data."""
    filled = [(t, [(k, series(rows, k)) for k in keys if series(rows, k)[0]], y) for t, keys, y in panels]
    filled = [p for p in filled if p[1]]
    if not filled:
        return None
    plt = pyplot()
    from matplotlib.ticker import MaxNLocator

    ncols = min(ncols, len(filled))
    nrows = -(-len(filled) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.9 * ncols, 2.9 * nrows), squeeze=False)
    for ax, (title, lines, ylabel) in zip(axes.flat, filled):
        for key, (x, y) in lines:
            ax.plot(x, y, marker="o" if len(x) < 12 else None, ms=3, lw=1.4, label=short(key) if key.startswith(M.SCORE_PREFIX) else key)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(title, fontsize=10)
        ax.set_xlabel(xlabel, fontsize=8)
        ax.set_ylabel(ylabel, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        if len(lines) > 1:
            ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(filled):]:
        ax.axis("off")
    fig.tight_layout()
    return png(fig)


def win_rates(wins: dict) -> str | None:
    """Bars: the policy's win rate against the baseline per judge, with the 0.5 line."""
    judges = [k for k in ("reward", "gold", "judge", "human") if wins.get(k) is not None]
    if not judges:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(1.6 + 1.1 * len(judges), 3.0))
    vals = [wins[k] for k in judges]
    ax.bar([{"reward": "reward model", "judge": "AI judge"}.get(k, k) for k in judges], vals,
           color=["tab:green" if v > 0.5 else "tab:red" if v < 0.5 else "tab:gray" for v in vals])
    for i, v in enumerate(vals):
        ax.text(i, v + 0.02, f"{v:.2f}", ha="center", fontsize=8)
    ax.axhline(0.5, color="black", ls="--", lw=1)
    ax.set_ylim(0, 1.08)
    ax.set_ylabel("policy win rate (ties = 1/2)")
    ax.set_title(f"Policy vs baseline on {wins.get('n', '?')} held-out responses", fontsize=10)
    return png(fig)


def proxy_gold_kl(points: list[dict], ppo_rows: list[dict] | None = None, gold_key: str | None = None) -> str | None:
    """Over-optimisation: proxy (reward model) and gold reward against KL to the reference.
    Points from eval.json (baseline, policy); with PPO metrics, the training trajectory too
    (reward/score against kl/mean, and a gold source `gold_key` when PPO logged one)."""
    pts = [p for p in points if p.get("kl") is not None and (p.get("proxy") is not None or p.get("gold") is not None)]
    if not pts:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.4, 3.4))
    if ppo_rows:
        kl = series(ppo_rows, M.KL)
        score = series(ppo_rows, M.SCORE)
        if kl[0] and len(kl[1]) == len(score[1]):
            ax.plot(kl[1], score[1], color="tab:blue", alpha=0.35, lw=1, label="PPO training: score")
        if gold_key and len(series(ppo_rows, gold_key)[1]) == len(kl[1]):
            ax.plot(kl[1], series(ppo_rows, gold_key)[1], color="tab:orange", alpha=0.35, lw=1,
                    label=f"PPO training: {gold_key}")
    for key, color, marker in (("proxy", "tab:blue", "o"), ("gold", "tab:orange", "s")):
        xs = [p["kl"] for p in pts if p.get(key) is not None]
        ys = [p[key] for p in pts if p.get(key) is not None]
        if xs:
            ax.plot(xs, ys, color=color, marker=marker, ms=7, lw=2, label=f"{key} reward (eval)")
            for p in pts:
                if p.get(key) is not None:
                    ax.annotate(p["model"], (p["kl"], p[key]), textcoords="offset points", xytext=(5, 5), fontsize=8)
    ax.set_xlabel("KL(policy || reference), nats per response")
    ax.set_ylabel("mean reward")
    ax.set_title("Proxy vs gold reward against KL", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return png(fig)


def control_returns(rows: list[dict], baseline: list[dict] | None, agent: str = "PPO") -> str | None:
    """The control loop's true return per round: against labels used (left; the true-reward
    agent's return at the same round, i.e. the same env steps, beside it) and against env steps
    (right). Rows as `alignloop control` logs them (eval/true_return, train/labels, train/env_steps)."""
    learned = [r for r in rows if r.get(M.TRUE_RETURN) is not None]
    if not learned:
        return None
    base = {r[M.ENV_STEPS]: r[M.TRUE_RETURN] for r in baseline or [] if r.get(M.TRUE_RETURN) is not None}
    with_labels = any(r.get(M.LABELS) for r in learned)
    plt = pyplot()
    fig, axes = plt.subplots(1, 2 if with_labels else 1, figsize=(10.5 if with_labels else 5.4, 3.4), squeeze=False)
    panels = [(M.LABELS, "labels used")] if with_labels else []
    for ax, (key, xlabel) in zip(axes.flat, [*panels, (M.ENV_STEPS, "agent env steps")]):
        x = [r[key] for r in learned]
        ax.plot(x, [r[M.TRUE_RETURN] for r in learned], marker="o", ms=3, lw=1.6,
                label=f"{agent} on the {'learned' if with_labels else 'true'} reward")
        pts = [(xi, base[r[M.ENV_STEPS]]) for xi, r in zip(x, learned) if r[M.ENV_STEPS] in base]
        if pts:
            ax.plot(*zip(*pts), marker="s", ms=3, lw=1.2, ls="--", label=f"{agent} on the true reward (same env steps)")
        ax.set_xlabel(xlabel, fontsize=8)
        ax.set_ylabel("true return (deterministic policy)", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes.flat[0].set_title("True return against labels used" if with_labels else "True return", fontsize=10)
    if with_labels:
        axes.flat[1].set_title("True return against env steps", fontsize=10)
    fig.tight_layout()
    return png(fig)
