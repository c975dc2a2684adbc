"""Judgments as long tables, the shape every quality function reads (one row per vote).

Input is what `alignloop feedback export` writes (and what `alignloop feedback simulate`
writes): one `Comparison` per ranking judgment and one `BinaryFeedback` per thumbs judgment,
each with `rater`, `source` and these `meta` fields (all optional except where noted):

    item_id        the item (prompt + its K responses) this judgment is about; without it the
                   item is identified by a hash of the prompt and responses
    response_index (thumbs only) which response of item_id the label is about: a thumbs
                   vote is on `item_id/response_index` (the feedback export writes both)
    campaign       the feedback campaign
    display_order  original response indices in the order shown, first = top / left
    submitted_at   ISO time of submission (sessions and drift are read from it)
    time_spent_s   seconds the rater spent (null: unknown)
    session        session number; without it a new session starts after a gap of
                   `session_gap_min` minutes between a rater's submissions
    is_gold        the item has a known answer ...
    gold_ranking   ... this one (best first, nested list = tie), used for calibration
    unsafe         response indices the rater flagged as unsafe (carried, not analysed)
    rating         (thumbs only, optional) a numeric rating used instead of the 0/1 label
    abstained      the rater answered "can't tell" (clips): not a vote; the judgment is left
                   out of every table below and counted in `abstentions`
    kind           "clips": the responses name video clips, so their text length means
                   nothing (dlen is 0 and no length bias is measured on them)

A ranking of K responses is decomposed into its C(K, 2) pairs (i < j, original indices):

    pairs   judgment, item, rater, campaign, session, t, i, j,
            y      +1 the rater put i above j, -1 j above i, 0 tie
            first  +1 i was shown before j, -1 after, 0 display order unknown
            dlen   z(log length of i) - z(log length of j) (standardised within the item)
            gold   +1 / -1 / 0 from gold_ranking on gold items, NaN elsewhere
    rankings  one row per ranking judgment (tiers, display order, gold tiers)
    thumbs    judgment, item, rater, campaign, session, t, value
    abstentions  judgment, item, rater, campaign, t: the "can't tell" answers

If a rater judged the same item more than once, only the latest judgment is kept (the
number dropped is reported); agreement and consensus count each rater once per item.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime
from itertools import combinations
from typing import Any

import numpy as np
import pandas as pd

from alignloop.data.records import BinaryFeedback, Comparison, ranking_tiers

Judgment = Comparison | BinaryFeedback


@dataclass
class Judgments:
    """Long tables built from judgment records (see the module docstring for columns)."""

    pairs: pd.DataFrame
    rankings: pd.DataFrame
    thumbs: pd.DataFrame
    items: dict[str, Comparison] = field(default_factory=dict)  # item id -> first record seen
    simulated: dict[str, dict] = field(default_factory=dict)  # rater -> meta.simulated profile
    duplicates_dropped: int = 0
    abstentions: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=ABSTAIN_COLS))

    @property
    def raters(self) -> list[str]:
        names = set(self.pairs["rater"]) | set(self.thumbs["rater"])
        return sorted(names)

    def subset(self, column: str, value: Any) -> Judgments:
        """The judgments whose `column` (e.g. campaign) equals `value`."""
        return Judgments(
            pairs=self.pairs[self.pairs[column] == value],
            rankings=self.rankings[self.rankings[column] == value],
            thumbs=self.thumbs[self.thumbs[column] == value],
            items=self.items,
            simulated=self.simulated,
            abstentions=self.abstentions[self.abstentions[column] == value] if column in self.abstentions else self.abstentions,
        )


def item_key(record: Judgment) -> str:
    """meta.item_id (with `/response_index` for a thumbs vote), else a hash of the prompt and
    the response(s)."""
    if record.meta.get("item_id") is not None:
        key = str(record.meta["item_id"])
        if isinstance(record, BinaryFeedback) and record.meta.get("response_index") is not None:
            key += f"/{record.meta['response_index']}"
        return key
    texts = record.responses if isinstance(record, Comparison) else [record.response]
    h = hashlib.sha1("\x1f".join([record.prompt_text(), *texts]).encode("utf-8")).hexdigest()
    return "h" + h[:12]


def _time(value: Any) -> float:
    """Seconds since the epoch, NaN when missing or unreadable."""
    if value is None:
        return float("nan")
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return float("nan")


def length_z(responses: list[str], scale: float = 1.0) -> np.ndarray:
    """log(characters + 1), centred within the item and divided by `scale`."""
    loglen = np.log1p(np.array([len(r) for r in responses], dtype=float))
    return (loglen - loglen.mean()) / scale


def pooled_length_scale(response_lists: list[list[str]]) -> float:
    """Pooled within-item standard deviation of log length, sqrt(sum of squares / sum(K - 1))
    (1.0 when undefined)."""
    ss, dof = 0.0, 0
    for rs in response_lists:
        ll = np.log1p(np.array([len(r) for r in rs], dtype=float))
        ss += float(np.sum((ll - ll.mean()) ** 2))
        dof += len(rs) - 1
    s = float(np.sqrt(ss / dof)) if dof > 0 else 0.0
    return s if s > 1e-9 else 1.0


def _sessions(df: pd.DataFrame, gap_s: float) -> pd.Series:
    """Session number per row: meta.session if given, else a new session after a gap."""
    out = pd.Series(0, index=df.index, dtype=int)
    for _, g in df.groupby("rater", sort=False):
        given = g["meta_session"]
        if given.notna().all():
            out[g.index] = given.astype(int)
            continue
        t = g["t"]
        if t.notna().all():
            order = t.sort_values(kind="stable")
            gaps = order.diff().fillna(0.0) > gap_s
            out[order.index] = np.cumsum(gaps.to_numpy()).astype(int)
        else:  # no times: file order, 50 judgments a session
            out[g.index] = np.arange(len(g)) // 50
    return out


def _pair_sign(tiers: list[list[int]], i: int, j: int) -> int:
    pos = {x: t for t, tier in enumerate(tiers) for x in tier}
    return int(np.sign(pos[j] - pos[i]))  # +1 when i is in an earlier (better) tier


def load_judgments(records: list[Judgment], session_gap_min: float = 30.0) -> Judgments:
    """Build the long tables from judgment records."""
    rank_rows, thumb_rows, abstain_rows = [], [], []
    items: dict[str, Comparison] = {}
    simulated: dict[str, dict] = {}
    for n, rec in enumerate(records):
        m = rec.meta
        rater = rec.rater if rec.rater is not None else "unknown"
        if isinstance(m.get("simulated"), dict):
            simulated.setdefault(rater, m["simulated"])
        common = {
            "judgment": n,
            "item": item_key(rec),
            "rater": rater,
            "campaign": str(m.get("campaign", "default")),
            "t": _time(m.get("submitted_at")),
            "time_spent_s": float("nan") if m.get("time_spent_s") is None else float(m["time_spent_s"]),
            "meta_session": m.get("session"),
            "source": rec.source,
        }
        if isinstance(rec, BinaryFeedback):
            value = m.get("rating", rec.label)
            thumb_rows.append({**common, "value": float(value)})
            continue
        if m.get("abstained"):
            abstain_rows.append({k: common[k] for k in ABSTAIN_COLS})
            continue
        items.setdefault(common["item"], rec)
        gold = m.get("gold_ranking") if m.get("is_gold") else None
        rank_rows.append({
            **common,
            "k": len(rec.responses),
            "tiers": rec.tiers(),
            "display_order": list(m["display_order"]) if m.get("display_order") else None,
            "is_gold": bool(m.get("is_gold", False)),
            "gold_tiers": ranking_tiers(gold) if gold else None,
        })
    rankings = _latest(pd.DataFrame(rank_rows, columns=_RANK_COLS))
    thumbs = _latest(pd.DataFrame(thumb_rows, columns=_THUMB_COLS))
    dropped = len(rank_rows) - len(rankings) + len(thumb_rows) - len(thumbs)
    gap_s = 60.0 * session_gap_min
    if len(rankings):
        rankings["session"] = _sessions(rankings, gap_s)
    if len(thumbs):
        thumbs["session"] = _sessions(thumbs, gap_s)
    pairs = _pairs(rankings, items)
    return Judgments(pairs=pairs, rankings=rankings.drop(columns="meta_session"),
                     thumbs=thumbs.drop(columns="meta_session"), items=items,
                     simulated=simulated, duplicates_dropped=dropped,
                     abstentions=pd.DataFrame(abstain_rows, columns=ABSTAIN_COLS))


_COMMON = ["judgment", "item", "rater", "campaign", "t", "time_spent_s", "meta_session", "source"]
_RANK_COLS = _COMMON + ["k", "tiers", "display_order", "is_gold", "gold_tiers"]
_THUMB_COLS = _COMMON + ["value"]
ABSTAIN_COLS = ["judgment", "item", "rater", "campaign", "t"]
PAIR_COLS = ["judgment", "item", "rater", "campaign", "session", "t", "i", "j", "y", "first", "dlen",
             "is_gold", "gold"]


def _latest(df: pd.DataFrame) -> pd.DataFrame:
    """Keep each rater's latest judgment of an item (by time, then by file order)."""
    if df.empty:
        df["session"] = pd.Series(dtype=int)
        return df
    order = df.assign(_t=df["t"].fillna(-np.inf)).sort_values(["_t", "judgment"], kind="stable")
    kept = order.drop_duplicates(["item", "rater"], keep="last").drop(columns="_t")
    return kept.sort_values("judgment").reset_index(drop=True)


def _pairs(rankings: pd.DataFrame, items: dict[str, Comparison]) -> pd.DataFrame:
    if rankings.empty:
        return pd.DataFrame(columns=PAIR_COLS)
    texts = [it for it in rankings["item"].unique() if items[it].meta.get("kind") != "clips"]
    scale = pooled_length_scale([items[it].responses for it in texts])
    lz = {it: length_z(items[it].responses, scale) if it in texts else np.zeros(len(items[it].responses))
          for it in rankings["item"].unique()}
    rows = []
    for r in rankings.itertuples(index=False):
        shown = {x: p for p, x in enumerate(r.display_order)} if r.display_order else None
        z = lz[r.item]
        for i, j in combinations(range(r.k), 2):
            rows.append((
                r.judgment, r.item, r.rater, r.campaign, r.session, r.t, i, j,
                _pair_sign(r.tiers, i, j),
                0 if shown is None else (1 if shown[i] < shown[j] else -1),
                float(z[i] - z[j]),
                r.is_gold,
                float(_pair_sign(r.gold_tiers, i, j)) if r.gold_tiers else np.nan,
            ))
    return pd.DataFrame(rows, columns=PAIR_COLS)


def gold_pairs(judgments: Judgments) -> pd.DataFrame:
    """One row per (item, i, j) of a gold item with a strict gold preference: item, i, j, gold."""
    g = judgments.pairs[judgments.pairs["is_gold"] & (judgments.pairs["gold"].fillna(0) != 0)]
    return g[["item", "i", "j", "gold"]].drop_duplicates(["item", "i", "j"]).reset_index(drop=True)
