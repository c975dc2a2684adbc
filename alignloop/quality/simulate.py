"""Simulated rater panels, and planning how many raters an item needs.

A simulated rater judges an item of K responses by drawing a utility for each response
and ranking by it (best first):

    u_k = gold_k + length_bias * len_k + confirmation * belief_k
          + (noise + drift * session) * eps_k

and then, with probability `position_bias`, puts the response shown first on top without
weighing it (a lazy click; the rest of its ranking stands). So for K = 2 the first-shown
response wins with probability 1/2 + position_bias / 2 on average, which is what the
report's position effect (first-shown win rate - 0.5) measures.

- gold_k: the gold scorer's score (`module:function`, (prompt, response) -> float),
  standardised *within items*: minus the item's mean, divided by the pooled within-item
  standard deviation sqrt(sum of squares / sum(K - 1)). So every parameter below is in
  units of the spread of response quality within one prompt, whatever the scorer's scale.
- len_k: log(characters + 1), standardised the same way.
- eps_k: Thurstone (`noise_model=thurstone`, default): standard Gaussian, so a rater's
  expected agreement with gold on a pair is 1/2 + arcsin(1 / sqrt(1 + noise^2)) / pi
  (0.94 at noise 0.2, 0.85 at 0.5, 0.75 at 1.0, 0.65 at 2.0); Bradley-Terry
  (`noise_model=bradley-terry`): Gumbel scaled to the same standard deviation, so pairwise
  choices follow a logistic (Bradley-Terry) model around the gold.
- display order: a fresh random permutation per judgment, recorded in meta.display_order.

Rater parameters (`name:key=value`; see `PARAMS`):

    noise          standard deviation of the utility noise (default 0.5)
    position_bias  probability of a lazy click: the response shown first goes on top
    length_bias    bonus per standard deviation of log length (longer = higher when > 0)
    leniency       thumbs only: shift of the thumbs-up threshold (> 0 lenient, < 0 harsh)
    drift          noise added per session (fatigue): noise + drift * session index
    confirmation   weight of a private, persistent belief about each response (a N(0, 1)
                   draw fixed by the rater's name and the response text): the rater confirms
                   what it already believes, identically every time it meets the response
    anchor         confirmation bias toward a shown model suggestion: the response shown first
                   is presented as the model's suggestion (meta.suggested) and gets this
                   utility bonus (the rater sees the suggestion first and looks for reasons
                   to keep it)
    rush           from the rater's second session on, time per item is multiplied by
                   (1 - rush) and the noise divided by it (speeding: a rater who reads a
                   fifth as long is five times as noisy; `alignloop quality audit` alerts on it)
    learn          practice round (`practice_items` > 0): after each practice item the rater
                   did not get fully right, seeing the known answer lowers its noise to
                   max(NOISE_FLOOR, noise * (1 - learn))
    group          (a name, not a number) the rater's group, exported as
                   meta.rater_attributes.group (what `quality report` and `quality consensus
                   --balance group` read)

**Modelling assumption of learning from feedback (practice rounds).** A rater's judgment
noise is the only thing practice changes: every practice answer that orders some strict gold
pair wrongly (score < 1) is followed by the known answer, and the rater's noise shrinks by
the factor (1 - learn), never below NOISE_FLOOR (0.2, the "careful" rater of the default
panel); right answers teach nothing, biases are not unlearned, and nothing is forgotten
later. A round is `practice_items` items with a known answer drawn at random; a mean score
below `practice_pass` starts another round (at most PRACTICE_ROUNDS). Live judgments then
use the learned noise; the practice answers are not emitted as judgments (their scores are
in meta.simulated.practice_scores).

Thumbs (`feedback=thumbs`): the rater judges each response alone: thumbs up when
gold_k + length_bias * len_k + confirmation * belief_k + leniency + noise * eps > 0, here
with gold standardised over *all* responses (above the average response = good).

Output: one record per judgment, exactly like an export of real raters (`source:
simulated`, meta: item_id, campaign, display_order, submitted_at, time_spent_s, is_gold,
gold_ranking on gold items only, unsafe (empty), simulated = the rater's profile). A
fraction `gold_fraction` of items are gold items: every rater judges them and they carry
their gold ranking, as a campaign's calibration items would. The gold ranking of EVERY item
is kept aside in `<out>.gold.jsonl` (one `Comparison` per item, source gold,
meta.gold_scores), for measuring consensus accuracy; the report never reads it.
Raters work in sessions of `session_size` judgments separated by four hours.
"""

from __future__ import annotations

import hashlib
import importlib
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import numpy as np

from alignloop.data.records import BinaryFeedback, Comparison, Samples
from alignloop.quality.consensus import ranking_from_scores
from alignloop.quality.judgments import length_z, pooled_length_scale

PARAMS: dict[str, str] = {
    "noise": "standard deviation of the utility noise, in within-item gold standard deviations (default 0.5)",
    "position_bias": "probability of putting the response shown first (top / left) on top unweighed",
    "length_bias": "utility bonus per standard deviation of log length (> 0 favours longer)",
    "leniency": "thumbs only: shift of the thumbs-up threshold (> 0 lenient, < 0 harsh)",
    "drift": "noise added per session: noise + drift * session index (fatigue)",
    "confirmation": "weight of a private persistent belief about each response (N(0, 1), fixed per rater and text)",
    "anchor": "utility bonus of the response shown first, presented as the model's suggestion (confirmation bias)",
    "rush": "from the second session on, time per item is multiplied by (1 - rush) (speeding)",
    "learn": "practice round: noise shrinks by (1 - learn) after each practice item not fully right",
    "group": "the rater's group (a name): meta.rater_attributes.group",
}
NOISE_FLOOR = 0.2  # practice never makes a rater less noisy than this (module docstring)
PRACTICE_ROUNDS = 5  # practice rounds at most, as `on_fail: retry` would run them


class PanelSpecError(ValueError):
    """A rater-panel specification that cannot be read; the message names the bad part."""


@dataclass(frozen=True)
class RaterProfile:
    name: str
    noise: float = 0.5
    position_bias: float = 0.0
    length_bias: float = 0.0
    leniency: float = 0.0
    drift: float = 0.0
    confirmation: float = 0.0
    anchor: float = 0.0
    rush: float = 0.0
    learn: float = 0.0
    group: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


_NAME = re.compile(r"^([A-Za-z][A-Za-z0-9_.-]*)(?:\*(\d+))?$")


def parse_panel(spec: str) -> list[RaterProfile]:
    """Read `"careful:noise=0.2, hasty:noise=1.0, lefty:position_bias=0.3"`.

    A part `name:key=value[:key=value...]` starts a rater; a following part `key=value`
    without a name adds to the same rater (`lefty:noise=0.4, position_bias=0.3`);
    `name*3:...` makes three raters name1..name3 with that profile; a bare `name` is a
    rater with the defaults."""
    raters: list[dict[str, Any]] = []
    parts = [p.strip() for p in spec.split(",") if p.strip()]
    if not parts:
        raise PanelSpecError("rater panel: empty (e.g. 'careful:noise=0.2, hasty:noise=1.0')")
    for part in parts:
        head, *assignments = part.split(":")
        if "=" in head:  # continuation of the previous rater
            if not raters:
                raise PanelSpecError(f"rater panel: {part!r}: starts with a parameter; give a rater name first")
            assignments = [head, *assignments]
        else:
            m = _NAME.match(head.strip())
            if not m:
                raise PanelSpecError(f"rater panel: {part!r}: bad rater name {head.strip()!r} "
                                     "(letters, digits, _ . -, starting with a letter; optional *N)")
            raters.append({"name": m.group(1), "count": int(m.group(2) or 1), "params": {}})
        for a in assignments:
            key, sep, value = (s.strip() for s in a.partition("="))
            if not sep:
                raise PanelSpecError(f"rater panel: {part!r}: {a!r} is not key=value")
            if key not in PARAMS:
                raise PanelSpecError(f"rater panel: {part!r}: unknown parameter {key!r} (known: {', '.join(PARAMS)})")
            if key == "group":
                if not _NAME.match(value) or "*" in value:
                    raise PanelSpecError(f"rater panel: {part!r}: group {value!r}: letters, digits, _ . -")
                raters[-1]["params"][key] = value
                continue
            try:
                number = float(value)
            except ValueError:
                raise PanelSpecError(f"rater panel: {part!r}: {key}={value!r} is not a number") from None
            if not np.isfinite(number) or (key in ("noise", "drift", "confirmation", "anchor") and number < 0):
                raise PanelSpecError(f"rater panel: {part!r}: {key} must be a finite number"
                                     + (" >= 0" if key in ("noise", "drift", "confirmation", "anchor") else ""))
            if key == "position_bias" and not 0 <= number <= 1:
                raise PanelSpecError(f"rater panel: {part!r}: position_bias is a probability in [0, 1]")
            if key in ("rush", "learn") and not 0 <= number <= 0.99:
                raise PanelSpecError(f"rater panel: {part!r}: {key} is a fraction in [0, 0.99]")
            raters[-1]["params"][key] = number
    out: list[RaterProfile] = []
    for r in raters:
        names = [r["name"]] if r["count"] == 1 else [f"{r['name']}{k + 1}" for k in range(r["count"])]
        out.extend(RaterProfile(name=n, **r["params"]) for n in names)
    seen = [p.name for p in out]
    dup = sorted({n for n in seen if seen.count(n) > 1})
    if dup:
        raise PanelSpecError(f"rater panel: rater name(s) given twice: {', '.join(dup)}")
    return out


def load_scorer(ref: str) -> Callable[[str, str], float]:
    """`package.module:function` -> the function (prompt, response) -> float."""
    module, sep, attr = ref.partition(":")
    if not sep or not module or not attr:
        raise ValueError(f"gold scorer {ref!r}: expected module:function "
                         "(e.g. alignloop.quality.gold:helpful_harmless)")
    try:
        fn = getattr(importlib.import_module(module), attr)
    except ImportError as err:
        raise ValueError(f"gold scorer {ref!r}: cannot import {module!r} ({err})") from None
    except AttributeError:
        raise ValueError(f"gold scorer {ref!r}: module {module!r} has no {attr!r}") from None
    if not callable(fn):
        raise ValueError(f"gold scorer {ref!r}: not a function")
    return fn


@dataclass
class SimItem:
    """One item to judge: prompt fields, K responses and their raw gold scores."""

    item_id: str
    prompt_fields: dict[str, Any]
    prompt_text: str
    responses: list[str]
    gold: np.ndarray


def items_from_samples(samples: Sequence[Samples], scorer: Callable[[str, str], float]) -> list[SimItem]:
    """Score every response of every samples record with at least two responses."""
    items = []
    for n, s in enumerate(samples):
        if len(s.responses) < 2:
            continue
        prompt = s.prompt_text()
        gold = np.array([float(scorer(prompt, r)) for r in s.responses])
        if not np.all(np.isfinite(gold)):
            raise ValueError(f"samples record {n}: the gold scorer returned a non-finite score")
        items.append(SimItem(s.id or f"item-{n:05d}", s.prompt_fields(), prompt, list(s.responses), gold))
    if not items:
        raise ValueError("no samples record has two or more responses to compare")
    return items


def synthetic_items(n_items: int, k: int = 2, seed: int = 0) -> list[SimItem]:
    """Items without text content: gold scores N(0, 1) and response lengths drawn
    independently (log-normal word counts), for planning without a samples file."""
    rng = np.random.default_rng(seed)
    items = []
    for n in range(n_items):
        lengths = np.maximum(1, rng.lognormal(np.log(30), 0.5, k).astype(int))
        responses = [" ".join(f"w{n}r{r}x{x}" for x in range(L)) + "." for r, L in enumerate(lengths)]
        prompt = f"Synthetic item {n}"
        items.append(SimItem(f"syn-{n:05d}", {"prompt": prompt}, prompt, responses, rng.normal(size=k)))
    return items


def _within_z(values: list[np.ndarray]) -> list[np.ndarray]:
    """Centre each item; divide by the pooled within-item standard deviation
    sqrt(sum of squares / sum(K - 1)), the per-response spread of independent draws."""
    centred = [v - v.mean() for v in values]
    dof = sum(len(v) - 1 for v in values)
    s = float(np.sqrt(sum(float(np.sum(c ** 2)) for c in centred) / max(dof, 1)))
    return [c / (s if s > 1e-12 else 1.0) for c in centred]


def _belief(rater: str, prompt: str, response: str) -> float:
    h = hashlib.sha1(f"{rater}\x1f{prompt}\x1f{response}".encode()).digest()
    return float(np.random.default_rng(int.from_bytes(h[:8], "little")).normal())


START = datetime(2025, 1, 6, 9, 0, tzinfo=timezone.utc)


def simulate(
    items: list[SimItem],
    panel: list[RaterProfile],
    per_item: int = 3,
    seed: int = 0,
    gold_fraction: float = 0.1,
    noise_model: str = "thurstone",
    session_size: int = 50,
    campaign: str = "simulated",
    feedback: str = "ranking",
    practice_items: int = 0,
    practice_pass: float = 0.8,
) -> tuple[list[Comparison | BinaryFeedback], list[Comparison]]:
    """(judgment records, gold records kept aside); see the module docstring."""
    if not panel:
        raise ValueError("the rater panel is empty")
    if not 1 <= per_item <= len(panel):
        raise ValueError(f"per_item {per_item}: must be between 1 and the panel size ({len(panel)})")
    if noise_model not in ("thurstone", "bradley-terry"):
        raise ValueError(f"noise model {noise_model!r}: thurstone or bradley-terry")
    if feedback not in ("ranking", "thumbs"):
        raise ValueError(f"feedback {feedback!r}: ranking or thumbs")
    rng = np.random.default_rng(seed)
    gz = _within_z([it.gold for it in items])
    all_gold = np.concatenate([it.gold for it in items])
    global_z = [(it.gold - all_gold.mean()) / (all_gold.std() or 1.0) for it in items]
    scale = pooled_length_scale([it.responses for it in items])
    lz = [length_z(it.responses, scale) for it in items]
    done = {r.name: 0 for r in panel}
    clock = {r.name: START + timedelta(minutes=7 * k) for k, r in enumerate(panel)}
    learned = practice_round(items, gz, lz, panel, practice_items, practice_pass, seed + 7919, noise_model) \
        if practice_items > 0 else {}

    def draw_noise(size: int) -> np.ndarray:
        if noise_model == "thurstone":
            return rng.normal(size=size)
        return (rng.gumbel(size=size) - np.euler_gamma) * np.sqrt(6) / np.pi  # sd 1

    records: list[Comparison | BinaryFeedback] = []
    gold_records: list[Comparison] = []
    for n, it in enumerate(items):
        k = len(it.responses)
        is_gold = bool(rng.random() < gold_fraction)
        ranking_gold = ranking_from_scores(it.gold)
        gold_records.append(Comparison(**it.prompt_fields, responses=it.responses, ranking=ranking_gold,
                                       source="gold", rater="gold", meta={
                                           "item_id": it.item_id, "gold_scores": it.gold.tolist(),
                                           "is_gold": is_gold}))
        chosen = range(len(panel)) if is_gold else rng.choice(len(panel), size=per_item, replace=False)
        for ri in sorted(int(c) for c in chosen):
            rater = panel[ri]
            session = done[rater.name] // session_size
            noise = (learned[rater.name]["noise"] if rater.name in learned else rater.noise) + rater.drift * session
            if session and rater.rush:
                noise /= 1 - rater.rush
            belief = np.array([_belief(rater.name, it.prompt_text, r) for r in it.responses]) \
                if rater.confirmation else np.zeros(k)
            spent = float(np.round(rng.lognormal(np.log(15 + 6 * k), 0.35) * (1 - rater.rush if session else 1.0), 1))
            if done[rater.name] and done[rater.name] % session_size == 0:
                clock[rater.name] += timedelta(hours=4)
            clock[rater.name] += timedelta(seconds=spent + 5)
            done[rater.name] += 1
            meta = {"item_id": it.item_id, "campaign": campaign,
                    "submitted_at": clock[rater.name].isoformat(), "time_spent_s": spent,
                    "is_gold": is_gold, "unsafe": [], "simulated": rater.as_dict()}
            if rater.group is not None:
                meta["rater_attributes"] = {"group": rater.group}
            if rater.name in learned:
                meta["simulated"] = {**meta["simulated"], "practice_scores": learned[rater.name]["scores"],
                                     "noise_after_practice": learned[rater.name]["noise"]}
            if feedback == "thumbs":
                u = global_z[n] + rater.length_bias * lz[n] + rater.confirmation * belief \
                    + rater.leniency + noise * draw_noise(k)
                for r in range(k):
                    records.append(BinaryFeedback(**it.prompt_fields, response=it.responses[r], label=int(u[r] > 0),
                                                  rater=rater.name, source="simulated",
                                                  meta={**meta, "item_id": f"{it.item_id}/{r}"}))
                continue
            order = [int(x) for x in rng.permutation(k)]
            u = gz[n] + rater.length_bias * lz[n] + rater.confirmation * belief + noise * draw_noise(k)
            if rater.anchor:  # the first shown is presented as the model's suggestion
                u[order[0]] += rater.anchor
                meta["suggested"] = order[0]
            if rng.random() < rater.position_bias:  # lazy click on the first shown
                u[order[0]] = np.max(u) + 1.0
            meta["display_order"] = order
            if is_gold:
                meta["gold_ranking"] = ranking_gold
            records.append(Comparison(**it.prompt_fields, responses=it.responses,
                                      ranking=[int(x) for x in np.argsort(-u, kind="stable")],
                                      rater=rater.name, source="simulated", meta=meta))
    return records, gold_records


def _pair_score(gold: np.ndarray, u: np.ndarray) -> float:
    """Share of the strict gold pairs that the utilities u order the gold way."""
    right = n = 0
    for a in range(len(gold)):
        for b in range(a + 1, len(gold)):
            if gold[a] != gold[b]:
                n += 1
                right += int((u[a] - u[b]) * (gold[a] - gold[b]) > 0)
    return right / n if n else 1.0


def practice_round(items: list[SimItem], gz: list[np.ndarray], lz: list[np.ndarray], panel: list[RaterProfile],
                   m: int, pass_: float, seed: int, noise_model: str = "thurstone") -> dict[str, dict[str, Any]]:
    """Per rater: the noise after practice and each practice score (the modelling assumption in
    the module docstring): rounds of `m` random items, noise -> max(NOISE_FLOOR, noise * (1 -
    learn)) after each answer scoring below 1, until a round's mean reaches `pass_` (at most
    PRACTICE_ROUNDS rounds)."""
    rng = np.random.default_rng(seed)
    out: dict[str, dict[str, Any]] = {}
    for rater in panel:
        noise, scores = rater.noise, []
        for _round in range(PRACTICE_ROUNDS):
            these = []
            for n in rng.choice(len(items), size=min(m, len(items)), replace=False):
                k = len(items[n].responses)
                eps = rng.normal(size=k) if noise_model == "thurstone" else \
                    (rng.gumbel(size=k) - np.euler_gamma) * np.sqrt(6) / np.pi
                u = gz[n] + rater.length_bias * lz[n] + noise * eps
                score = _pair_score(gz[n], u)
                these.append(score)
                if score < 1.0:
                    noise = max(min(NOISE_FLOOR, rater.noise), noise * (1.0 - rater.learn))
            scores += these
            if np.mean(these) >= pass_:
                break
        out[rater.name] = {"noise": float(noise), "scores": [float(x) for x in scores]}
    return out


def plan(
    items: list[SimItem],
    panel: list[RaterProfile],
    max_per_item: int | None = None,
    repeats: int = 3,
    seed: int = 0,
    methods: Sequence[str] = ("majority", "dawid-skene", "noisy-bt"),
    noise_model: str = "thurstone",
) -> list[dict[str, Any]]:
    """Consensus accuracy against gold as raters per item grows from 1 to `max_per_item`
    (at most the panel size): for each count, `repeats` independent simulated campaigns
    (no gold items, so nothing is calibrated on the answer); one row per (count, method)
    with the mean and standard deviation of accuracy over all strictly ordered gold pairs,
    and the number of judgments that count costs."""
    from alignloop.quality.consensus import accuracy_vs_gold, consensus, gold_pairs_from_records
    from alignloop.quality.judgments import load_judgments

    top = min(max_per_item or len(panel), len(panel))
    rows = []
    for per_item in range(1, top + 1):
        acc: dict[str, list[float]] = {m: [] for m in methods}
        for rep in range(repeats):
            recs, gold = simulate(items, panel, per_item=per_item, seed=seed + 1000 * rep + per_item,
                                  gold_fraction=0.0, noise_model=noise_model)
            j = load_judgments(recs)
            gp = gold_pairs_from_records(gold)
            for m in methods:
                acc[m].append(accuracy_vs_gold(consensus(j, m, seed=seed).pairs, gp)["accuracy"])
        for m in methods:
            rows.append({"per_item": per_item, "method": m, "accuracy": float(np.mean(acc[m])),
                         "sd": float(np.std(acc[m])), "judgments": per_item * len(items), "repeats": repeats})
    return rows
