"""Several policies side by side (`alignloop evaluate --policies sft=...,dpo=...,ppo=...`): the
answer to "why RL and not supervised learning on the labels?" by measurement.

`methods` turns the per-model figures `run_evaluate` computed (each model sampled once, on the
same prompts with the same seed) into one row per model: gold reward and its paired gain over
the baseline with a standard error (`metrics.paired_gain`), gold and reward-model win rates
against the baseline, KL to the reference, length, missing EOS, harmlessness, and what training
it cost. The cost is read from the recipe runner's records (RUN/.stages/NAME.json: seconds and
peak RSS of each stage) of the model's folder and, for a PPO policy, of the reward model it was
trained against: PPO's cost is reward model + PPO. `table_html` and `figure` are the report's
one table and one figure.
"""

from __future__ import annotations

import json
from pathlib import Path

BASELINE = "baseline"


def training_cost(model: str) -> dict | None:
    """{seconds, peak_rss_gb, stages} of the stages that made `model` (a folder in a run folder):
    its own stage and, for a PPO output, its reward-model folders; None when nothing was recorded."""
    import yaml

    folder = Path(model)
    if not folder.is_dir():
        return None
    folders = [folder]
    config = folder / "config.yaml"
    reward = (yaml.safe_load(config.read_text(encoding="utf-8")) or {}).get("reward") if config.exists() else None
    for part in str(reward or "").split(","):
        path = Path(part.split("*", 1)[-1].strip())
        if part.strip() and path.is_dir():
            folders.append(path)
    seconds, peak, stages = 0.0, None, []
    for f in folders:
        state = f.parent / ".stages" / f"{f.name}.json"
        if state.exists():
            s = json.loads(state.read_text(encoding="utf-8"))
            seconds += s.get("seconds") or 0.0
            if s.get("peak_rss_gb") is not None:
                peak = max(peak or 0.0, s["peak_rss_gb"])
            stages.append(f.name)
    return {"seconds": seconds, "peak_rss_gb": peak, "stages": stages} if stages else None


def methods(runs: dict, report: dict, roles: dict[str, str]) -> dict[str, dict]:
    """One row per model (the baseline first): {model, gold, gold_std, gain (paired_gain vs the
    baseline), gold_win_rate, reward_win_rate, kl_k1, length_tokens, no_eos_share,
    harmlessness, over_refusal_rate, cost}."""
    from alignloop.evaluate.metrics import paired_gain, win_rate

    base = runs.get(BASELINE)
    order = [BASELINE, *(r for r in roles if r != BASELINE)] if base else list(roles)
    rows = {}
    for role in order:
        run, rep = runs[role], report[role]
        row = {"model": roles[role], "gold": (rep["gold"] or {}).get("mean"), "gold_std": (rep["gold"] or {}).get("std"),
               "gain": None, "gold_win_rate": None, "reward_win_rate": None, "kl_k1": rep["kl_k1"],
               "length_tokens": rep["length_tokens"], "no_eos_share": rep["no_eos_share"],
               "harmlessness": rep["harmlessness"]["rate"], "over_refusal_rate": rep["over_refusal_rate"],
               "cost": training_cost(roles[role])}
        if base is not None and role != BASELINE:
            if run["gold"] and base["gold"]:
                row["gain"] = paired_gain(run["gold"], base["gold"], run["gens"].prompt_index)
                row["gold_win_rate"] = win_rate(run["gold"], base["gold"])
            if "total" in run["scores"]:
                row["reward_win_rate"] = win_rate(run["scores"]["total"], base["scores"]["total"])
        rows[role] = row
    return rows


COLUMNS = ("model", "gold reward", "gain vs baseline ± SE (z)", "gold win rate", "reward-model win rate", "KL (nats)",
           "length (tokens)", "no EOS", "harmlessness", "train s", "peak RSS GB")


def _cells(role: str, r: dict) -> list:
    g, c = r["gain"], r["cost"] or {}
    gain = (f"{g['gain']:+.3f} ± {g['se']:.3f} ({g['z']:.1f})" if g and g.get("se") and g.get("z") is not None
            else f"{g['gain']:+.3f}" if g and g.get("gain") is not None else None)
    return [role, r["gold"], gain, r["gold_win_rate"], r["reward_win_rate"], r["kl_k1"], r["length_tokens"],
            r["no_eos_share"], r["harmlessness"], c.get("seconds"), c.get("peak_rss_gb")]


def print_methods(rows: dict[str, dict]) -> None:
    from rich.table import Table

    from alignloop.progress import console

    table = Table(title="policies side by side (gain: paired over prompts, against the baseline)")
    for col in COLUMNS:
        table.add_column(col, justify="left" if col == "model" else "right")
    for role, r in rows.items():
        table.add_row(*("-" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v) for v in _cells(role, r)))
    console.print(table)


def table_html(rows: dict[str, dict]) -> str:
    from alignloop.report_html import table

    return table(list(COLUMNS), [_cells(role, r) for role, r in rows.items()])


def figure(rows: dict[str, dict]) -> str | None:
    """Gold reward of each model with its paired standard error (bars), against its KL to the reference."""
    from alignloop.report_html import png, pyplot

    names = [n for n, r in rows.items() if r["gold"] is not None]
    if not names:
        return None
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(9.0, 3.2))
    se = [(rows[n]["gain"] or {}).get("se") or 0.0 for n in names]
    left.bar(names, [rows[n]["gold"] for n in names], yerr=se, capsize=4,
             color=["tab:gray" if n == BASELINE else "tab:blue" for n in names])
    left.set_ylabel("gold reward (error bar: paired SE of the gain)")
    left.set_title("gold reward on the held-out prompts", fontsize=10)
    for n in names:
        if rows[n]["kl_k1"] is not None:
            right.scatter(rows[n]["kl_k1"], rows[n]["gold"], s=40)
            right.annotate(n, (rows[n]["kl_k1"], rows[n]["gold"]), textcoords="offset points", xytext=(5, 4), fontsize=8)
    right.set_xlabel("KL to the reference (nats per response)")
    right.set_ylabel("gold reward")
    right.set_title("gold reward against KL", fontsize=10)
    fig.tight_layout()
    return png(fig)
