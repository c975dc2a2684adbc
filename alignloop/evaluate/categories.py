"""Evaluation per prompt category (issue 24 item 4): every figure of `alignloop evaluate` per kind
of prompt as well as overall, so that a policy that improved on some kinds of prompt and got
worse on others (over-fitting to what the reward model likes) shows.

A prompt's category is its `meta.category` (data/records.py moves a top-level `category` or
`task` field there); prompts without one are "uncategorised". The shipped held-out prompts are
help, advice, facts, creative and redteam; the shipped red-team prompts are all `redteam` and
carry a harm area (`meta.harm`: violence, weapons, cyber, ...), by which their harmlessness is
broken down.

Everything is computed from the samples rows `evaluate` writes (samples_ROLE.jsonl: one row per
prompt, its K responses, `rewards` per response: total, each source, gold, kl_k1; redteam_ROLE.jsonl
the same without rewards), so an earlier run's eval folder can be re-read (`from_folder`). Rows of
different models are paired by position (the same prompt, the same sample index: evaluate samples
every model with one seed).

    category_of(row)                 the row's category
    group(rows, key)                 {category: row indices}, categories in first-seen order
    model_summary(rows, idx)         one model's figures on some prompts
    versus(rows, base, idx)          gains over the baseline with paired standard errors, win rates
    change(gain)                     "better" / "worse" beyond 2 paired standard errors, else "same"
    by_category(samples, redteam)    eval.json's `by_category` and `redteam_by_harm`
    print_categories, categories_html    the compact table after the overall one; the report's table

The standard errors are per category and not corrected for the number of categories: with five
categories, one "better" or "worse" in twenty comparisons is expected by chance at 2 SE.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

BASELINE = "baseline"
UNCATEGORISED = "uncategorised"
REDTEAM = "redteam"
Z = 2.0  # a change beyond Z paired standard errors is marked


def category_of(row: dict) -> str:
    """A samples row's (or prompt record dict's) category: meta.category, else "uncategorised"."""
    return (row.get("meta") or {}).get("category") or UNCATEGORISED


def harm_of(row: dict) -> str:
    """A red-team row's harm area (meta.harm), else its category."""
    return (row.get("meta") or {}).get("harm") or category_of(row)


def is_redteam(meta: dict, prompt_text: str) -> bool:
    """A prompt of category "redteam", or without a category but with a harmful keyword
    (quality.gold.is_red_team)."""
    from alignloop.quality.gold import is_red_team

    category = meta.get("category")
    return category == REDTEAM if category else is_red_team(prompt_text)


def _prompt_text(row: dict) -> str:
    if row.get("prompt") is not None:
        return row["prompt"]
    return next(m["content"] for m in reversed(row["messages"]) if m["role"] == "user")


def group(rows: list[dict], key: Callable[[dict], str] = category_of) -> dict[str, list[int]]:
    """Row indices per category, categories in the order they first appear.

    >>> group([{"meta": {"category": "a"}}, {}, {"meta": {"category": "a"}}])
    {'a': [0, 2], 'uncategorised': [1]}
    """
    out: dict[str, list[int]] = {}
    for i, row in enumerate(rows):
        out.setdefault(key(row), []).append(i)
    return out


def _per_response(rows: list[dict], idx: list[int], name: str) -> tuple[list[float], list[int]] | None:
    """Scores `rewards[name]` of the responses of rows idx, flattened, with each one's prompt
    (row) index; None when the rows have no such score."""
    if not idx or any(name not in (rows[i].get("rewards") or {}) for i in idx):
        return None
    values, prompt = [], []
    for i in idx:
        values += rows[i]["rewards"][name]
        prompt += [i] * len(rows[i]["rewards"][name])
    return values, prompt


def _refusals(rows: list[dict], idx: list[int]) -> tuple[list[bool], list[int]]:
    from alignloop.quality.gold import is_refusal

    flags, prompt = [], []
    for i in idx:
        flags += [is_refusal(t) for t in rows[i]["responses"]]
        prompt += [i] * len(rows[i]["responses"])
    return flags, prompt


def model_summary(rows: list[dict], idx: list[int]) -> dict:
    """One model's figures on the prompts (rows) idx: {responses, gold, reward (summary of the
    total reward), kl_k1 (mean), length_words, no_eos_share, harmlessness {rate, n} (refusal share
    on red-team prompts), over_refusal_rate (refusal share on the others)}; None where not measured."""
    from alignloop.evaluate.metrics import harmless_rate, summary  # metrics imports torch: not at module level

    texts = [t for i in idx for t in rows[i]["responses"]]
    finished = [f for i in idx for f in (rows[i].get("finished") or [])]
    gold, reward, kl = (_per_response(rows, idx, k) for k in ("gold", "total", "kl_k1"))
    red = [i for i in idx if is_redteam(rows[i].get("meta") or {}, _prompt_text(rows[i]))]
    ordinary = sorted(set(idx) - set(red))
    red_flags, ordinary_flags = _refusals(rows, red)[0], _refusals(rows, ordinary)[0]
    return {
        "responses": len(texts),
        "gold": summary(gold[0]) if gold else None,
        "reward": summary(reward[0]) if reward else None,
        "kl_k1": summary(kl[0])["mean"] if kl else None,
        "length_words": summary([len(t.split()) for t in texts])["mean"],
        "no_eos_share": 1.0 - sum(finished) / len(finished) if finished and len(finished) == len(texts) else None,
        "harmlessness": {"rate": harmless_rate(red_flags), "n": len(red_flags)},
        "over_refusal_rate": harmless_rate(ordinary_flags),
    }


def versus(rows: list[dict], base: list[dict], idx: list[int]) -> dict:
    """A model's rows against the baseline's on the prompts idx, paired by prompt and sample
    index: {gold_gain, reward_gain, harmless_gain (metrics.paired_gain: gain, se, z, prompts; the
    harmlessness gain on the red-team prompts among idx, a refusal counting 1), win_rate {gold,
    reward} (ties count 1/2)}; None where not measured."""
    from alignloop.evaluate.metrics import paired_gain, win_rate

    for i in idx:
        if len(rows[i]["responses"]) != len(base[i]["responses"]):
            raise ValueError(f"prompt {rows[i].get('id') or i}: {len(rows[i]['responses'])} responses against "
                             f"the baseline's {len(base[i]['responses'])}")
    out: dict = {"win_rate": {}}
    for name, key in (("gold", "gold_gain"), ("total", "reward_gain")):
        mine, theirs = _per_response(rows, idx, name), _per_response(base, idx, name)
        both = mine is not None and theirs is not None
        out[key] = paired_gain(mine[0], theirs[0], mine[1]) if both else None
        out["win_rate"]["gold" if name == "gold" else "reward"] = win_rate(mine[0], theirs[0]) if both else None
    red = [i for i in idx if is_redteam(rows[i].get("meta") or {}, _prompt_text(rows[i]))]
    if red:
        (mine, prompt), (theirs, _) = _refusals(rows, red), _refusals(base, red)
        out["harmless_gain"] = paired_gain([float(x) for x in mine], [float(x) for x in theirs], prompt)
    else:
        out["harmless_gain"] = None
    return out


def change(gain: dict | None, z: float = Z) -> str | None:
    """The change a paired gain shows: "better" when it is more than z standard errors above 0,
    "worse" when more than z below, else "same"; None without a standard error to judge by (one
    prompt, or a zero standard error with a non-zero gain: every prompt moved by the same amount,
    as two prompts with K = 2 refusal flags often do).

    >>> change({"gain": 0.5, "se": 0.2}), change({"gain": -0.5, "se": 0.2}), change({"gain": 0.3, "se": 0.2})
    ('better', 'worse', 'same')
    """
    if not gain or gain.get("gain") is None or gain.get("se") is None:
        return None
    g, se = gain["gain"], gain["se"]
    if se == 0:
        return "same" if g == 0 else None
    return "better" if g > z * se else "worse" if g < -z * se else "same"


def _breakdown(samples: dict[str, list[dict]], key: Callable[[dict], str]) -> dict[str, dict]:
    rows0 = next(iter(samples.values()))
    for role, rows in samples.items():
        if len(rows) != len(rows0):
            raise ValueError(f"{role}: {len(rows)} prompts against {len(rows0)}")
    out = {}
    for cat, idx in group(rows0, key).items():
        models = {}
        for role, rows in samples.items():
            models[role] = model_summary(rows, idx)
            if role != BASELINE and BASELINE in samples:
                models[role].update(versus(rows, samples[BASELINE], idx))
        out[cat] = {"prompts": len(idx), "models": models}
    return out


def by_category(samples: dict[str, list[dict]], redteam: dict[str, list[dict]] | None = None) -> dict:
    """eval.json's per-category figures from each model's samples rows (role -> rows, the
    baseline's role "baseline"):

        by_category[cat]      = {prompts, models: {role: model_summary + versus the baseline}}
        redteam_by_harm[harm] = the same over the red-team prompts, by meta.harm
    """
    out = {"by_category": _breakdown(samples, category_of) if samples else {}}
    out["redteam_by_harm"] = _breakdown(redteam, harm_of) if redteam else {}
    return out


def from_folder(folder: str | Path) -> dict:
    """`by_category` of an eval folder written before eval.json carried it, from its
    samples_ROLE.jsonl and redteam_ROLE.jsonl."""
    folder = Path(folder)

    def read(kind: str) -> dict[str, list[dict]]:
        files = sorted(folder.glob(f"{kind}_*.jsonl"), key=lambda p: (p.stem == f"{kind}_{BASELINE}", p.name))
        return {p.stem[len(kind) + 1:]: [json.loads(line) for line in p.read_text(encoding="utf-8").splitlines()
                                         if line.strip()] for p in files}

    return by_category(read("samples"), read("redteam"))


# ------------------------------------------------------------------------- display

MARK = {"better": "▲", "worse": "▼", "same": "", None: ""}
# (header in the report, header in the terminal, printed in the terminal)
COLUMNS = [("category", "category", True), ("prompts", "n", True), ("gold baseline", "gold base", True),
           ("gold policy", "gold pol", True), ("gold gain ± SE", "gain ± SE", True), ("gold win rate", "win", True),
           ("reward gain ± SE", "reward gain", False), ("KL (k1, nats)", "KL", True),
           ("harmless baseline", "harmless base", True), ("harmless policy", "harmless pol", True),
           ("harmless gain ± SE", "harmless gain", True), ("over-refusal baseline", "", False),
           ("over-refusal policy", "", False)]
HARM_COLUMNS = [("harm area", "harm area", True), ("prompts", "n", True), ("harmless baseline", "harmless base", True),
                ("harmless policy", "harmless pol", True), ("harmless gain ± SE", "harmless gain", True)]


def gain_text(g: dict | None, digits: int = 3) -> str | None:
    """'+0.210 ± 0.080 ▲' (▲ / ▼: beyond 2 standard errors, `change`)."""
    if not g or g.get("gain") is None:
        return None
    if g.get("se") is None:
        return f"{g['gain']:+.{digits}f}"
    mark = MARK[change(g)]
    return f"{g['gain']:+.{digits}f} ± {g['se']:.{digits}f}" + (f" {mark}" if mark else "")


def _mean(s: dict | None):
    return None if not s else s.get("mean")


def policy_roles(section: dict) -> list[str]:
    """The compared (non-baseline) roles of a by_category section, in order."""
    first = next(iter(section.values()), {"models": {}})
    return [r for r in first["models"] if r != BASELINE]


def category_rows(section: dict, role: str) -> list[list]:
    """One row of COLUMNS per category, `role` against the baseline: numbers, names, and the
    gains as paired_gain dicts (None where not measured)."""
    rows = []
    for cat, c in section.items():
        m, b = c["models"][role], c["models"].get(BASELINE)
        harm = m["harmlessness"]["n"] > 0
        rows.append([cat, c["prompts"], _mean(b["gold"]) if b else None, _mean(m["gold"]), m.get("gold_gain"),
                     (m.get("win_rate") or {}).get("gold"), m.get("reward_gain"), m["kl_k1"],
                     b["harmlessness"]["rate"] if harm and b else None, m["harmlessness"]["rate"] if harm else None,
                     m.get("harmless_gain"), b["over_refusal_rate"] if b else None, m["over_refusal_rate"]])
    return rows


def harm_rows(section: dict, role: str) -> list[list]:
    """One row of HARM_COLUMNS per harm area."""
    rows = []
    for harm, c in section.items():
        m, b = c["models"][role], c["models"].get(BASELINE)
        rows.append([harm, c["prompts"], b["harmlessness"]["rate"] if b else None, m["harmlessness"]["rate"],
                     m.get("harmless_gain")])
    return rows


TABLES = (("by_category", COLUMNS, category_rows, "per category"),
          ("redteam_by_harm", HARM_COLUMNS, harm_rows, "red-team prompts per harm area"))


def _tables(report: dict):
    """(title, columns, rows) of each table to show: none for a section with one category (the
    overall table again)."""
    for key, columns, make, title in TABLES:
        section = report.get(key) or {}
        if len(section) > 1:
            for role in policy_roles(section):
                yield f"{title}: {role}" + (" against the baseline" if BASELINE in next(iter(section.values()))["models"]
                                            else ""), columns, make(section, role)


def print_categories(report: dict) -> None:
    """The compact per-category tables printed after the overall one (2 decimals)."""
    from rich.table import Table

    from alignloop.progress import console

    def cell(v) -> str:
        if isinstance(v, dict):
            return gain_text(v, 2) or "-"
        return "-" if v is None else f"{v:.2f}" if isinstance(v, float) else str(v)

    for title, columns, rows in _tables(report):
        table = Table(title=title + " (▲ ▼: beyond 2 paired standard errors)")
        keep = [k for k, (_, _, shown) in enumerate(columns) if shown]
        for k in keep:
            table.add_column(columns[k][1], justify="left" if k == 0 else "right")
        for row in rows:
            table.add_row(*(cell(row[k]) for k in keep))
        console.print(table)


def categories_html(report: dict) -> str:
    """The report's per-category tables (nothing when eval.json has at most one category)."""
    from alignloop.report_html import table

    parts = []
    for title, columns, rows in _tables(report):
        parts.append(f"<h3>{title[0].upper() + title[1:]}</h3>")
        parts.append(table([c[0] for c in columns], [[gain_text(v) if isinstance(v, dict) else v for v in row]
                                                     for row in rows]))
    if parts:
        parts.insert(0, "<p>Every figure per prompt category. A gain is paired over the prompts of its category "
                        "(the mean difference of the two models' per-prompt means, ± its standard error); "
                        "▲ marks a gain more than 2 standard errors above 0 (the policy improved), ▼ more than 2 "
                        "below (it got worse). The errors are per category, not corrected for the number of "
                        "categories. Harmlessness: the refusal share on red-team prompts; over-refusal: on the "
                        "others.</p>")
    return "".join(parts)
