"""People label the loop's queries (`alignloop control --feedback human | mixed`): one `clips`
campaign of the feedback app per round, and the loop waiting for it.

Round r, step 1, with people (loop.py calls these in order):
  1) `plan_queries`: the round's pairs, chosen as for the synthetic labeller (most disagreed
     first); each gets its held-out draw and the synthetic labeller's answer (kept in any case:
     it is the top-up, and what people are compared with). `--feedback human`: every pair goes to
     people; mixed: the first `human_share` of them (the most disagreed), the rest is labelled
     synthetically;
  2) `ask_people`: each clip of the people's pairs (and of `gold_pairs` gold pairs: pool clips
     with a large true-return gap, the higher one the known answer) rendered again from its seed
     and actions to a short H.264 video (video.py), put into the media folder beside the feedback
     database under its sha256, and campaign `control/OUT/round-r-FINGERPRINT` created
     -> checkpoint (phase "asked"); then
  3) `collect_answers`: `Paused` (the command exits with status 3, printing where raters go)
     until every item has its raters; the same command run again checks again and, once it is
     complete, exports the judgments. A pair's label is its raters' vote share for the first
     clip, p = (votes for it + equal / 2) / (votes + equal); "can't tell" is no vote, so a pair
     everybody abstained on has no label (mixed: the synthetic labeller's answer tops it up).
`labels_of` turns the plan and the answers into the round's labels and records, each with its
source (`human` or `simulated`), and `agreement` measures people against the synthetic
labeller and against the true-return order on the pairs both answered (quality's
`ai_human_alignment`, the same matching of prompt and clip pair).
"""

from __future__ import annotations

import hashlib
import json
import shlex
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from alignloop.config import ConfigError
from alignloop.configs import ControlConfig
from alignloop.control.clips import Clips
from alignloop.control.labeller import SyntheticLabeller, question
from alignloop.control.video import make_render_env, render_clip
from alignloop.data.io import read_lines
from alignloop.data.records import Comparison, Samples
from alignloop.feedback import reports, store
from alignloop.feedback.limits import CLI_BUSY_TIMEOUT_S, MAX_CAMPAIGN_NAME, MAX_SEED
from alignloop.feedback.waiting import Paused, waiting_message
from alignloop.progress import console
from alignloop.quality.ai_alignment import ai_human_alignment
from alignloop.train.checkpoint import CHECKPOINT

# how a run goes and where its campaigns live, not what it asks (the campaign name carries OUT's name)
RUN_ONLY = {"resume", "stop_at_round", "keep_checkpoint", "threads", "out", "feedback_db", "feedback_media"}
SYNTHETIC_ANSWERS = "synthetic_answers.jsonl"  # OUT/: the synthetic labeller on the people's pairs (not trained on)
GOLD_GAP = 0.5  # a gold pair's true returns differ by at least this share of the pool's range


def feedback_db(cfg: ControlConfig) -> str:
    return cfg.feedback_db or str(Path(cfg.out) / "feedback.db")


def media_folder(cfg: ControlConfig) -> Path:
    folder = store.media_dir(feedback_db(cfg), cfg.feedback_media)
    if folder is None:
        raise ConfigError("--feedback-media: give the folder of the clip videos (a database URL has none beside it)")
    return folder


def fingerprint(cfg: ControlConfig) -> str:
    """What decides the questions the loop asks: the config without its run-only fields."""
    fields = {k: v for k, v in cfg.model_dump(mode="json").items() if k not in RUN_ONLY}
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


def campaign_name(cfg: ControlConfig, round_: int) -> str:
    """control/OUT/round-r-FINGERPRINT: the same run asks the same campaign again, another run never."""
    tail = f"/round-{round_}-{fingerprint(cfg)[:10]}"
    return f"control/{Path(cfg.out).resolve().name}"[: MAX_CAMPAIGN_NAME - len(tail)] + tail


def campaign_seed(cfg: ControlConfig, round_: int) -> int:
    """The round's campaign seed (display orders, gold mixing): another per round, or each
    round's raters would draw the same gold turns and left/right orders."""
    return (cfg.seed * 1_000_003 + round_ * 7_919) % MAX_SEED


def rerun_command() -> str:
    """The command that goes on: this one again (as it was typed, when it was `alignloop ...`)."""
    if Path(sys.argv[0]).name in ("alignloop", "cli.py", "__main__.py") and len(sys.argv) > 1:
        return "alignloop " + shlex.join(sys.argv[1:])
    return "the same alignloop command again"


@dataclass
class Plan:
    """A round's pairs (pool indices) and what was drawn for each; JSON in the checkpoint."""

    pairs: list[list[int]]  # (P, 2) pool indices; pair k compares pool clip pairs[k][0] (responses[0]) with [1]
    human: list[bool]  # pair k goes to people
    heldout: list[bool]
    synthetic: list[dict]  # the synthetic labeller's comparison record of pair k
    campaign: str | None = None  # the people's campaign (None when no pair goes to people)

    def to_json(self) -> dict:
        return {"pairs": self.pairs, "human": self.human, "heldout": self.heldout, "synthetic": self.synthetic,
                "campaign": self.campaign}


def plan_queries(cfg: ControlConfig, pool: Clips, chosen: np.ndarray, labeller: SyntheticLabeller,
                 rng: np.random.Generator, round_: int) -> Plan:
    """Step 1: per chosen pair (most disagreed first) its held-out draw and the synthetic
    labeller's answer (the draws of the synthetic loop, in its order), and who answers it."""
    returns = pool.true_returns
    heldout, synthetic = [], []
    for i, j in chosen:
        heldout.append(bool(rng.random() < cfg.heldout_fraction))
        rec = labeller.label(cfg.env, str(pool.ids[i]), str(pool.ids[j]), returns[i], returns[j], rng,
                             meta={"round": round_, "heldout": heldout[-1]})
        synthetic.append(rec.model_dump(mode="json", exclude_none=True))
    n = len(chosen) if cfg.feedback == "human" else min(len(chosen), round(len(chosen) * cfg.human_share))
    return Plan(pairs=[[int(i), int(j)] for i, j in chosen], human=[k < n for k in range(len(chosen))],
                heldout=heldout, synthetic=synthetic)


def gold_pairs(pool: Clips, count: int) -> list[tuple[int, int]]:
    """Up to `count` pairs (higher, lower) of pool clips: the k-th highest true return with the
    k-th lowest, while their gap is at least GOLD_GAP of the pool's range."""
    order = np.argsort(-pool.true_returns, kind="stable")
    span = float(pool.true_returns.max() - pool.true_returns.min()) if len(pool) else 0.0
    out = []
    for k in range(min(count, len(pool) // 2)):
        hi, lo = int(order[k]), int(order[-1 - k])
        if span <= 0 or pool.true_returns[hi] - pool.true_returns[lo] < GOLD_GAP * span:
            break
        out.append((hi, lo))
    return out


def ask_people(cfg: ControlConfig, pool: Clips, plan: Plan, round_: int) -> str:
    """Step 2: render the people's clips (and the gold pairs'), put the videos in the media folder
    and create the round's clips campaign (once: a campaign of that name is kept)."""
    name = campaign_name(cfg, round_)
    db, folder = feedback_db(cfg), media_folder(cfg)
    engine, sessions = store.open_db(db, busy_timeout=CLI_BUSY_TIMEOUT_S)
    try:
        with sessions() as s:
            if store.find_campaign_id(s, name) is not None:  # asked before the checkpoint could say so
                return name
            pairs = [p for p, h in zip(plan.pairs, plan.human) if h]
            gold = gold_pairs(pool, cfg.gold_pairs)
            digests = _videos(cfg, s, folder, pool, sorted({i for pair in pairs + gold for i in pair}), round_)
            task = question(cfg.env)
            samples = [Samples(id=f"{pool.ids[i]}|{pool.ids[j]}", prompt=task, responses=[str(pool.ids[i]), str(pool.ids[j])],
                               meta={"media": [digests[i], digests[j]], "round": round_, "kind": "clips"})
                       for i, j in pairs]
            golds = [Comparison(id=f"gold:{pool.ids[i]}|{pool.ids[j]}", prompt=task, ranking=[0, 1],
                                responses=[str(pool.ids[i]), str(pool.ids[j])],
                                meta={"media": [digests[i], digests[j]], "round": round_, "kind": "clips",
                                      "true_returns": [float(pool.true_returns[i]), float(pool.true_returns[j])]})
                     for i, j in gold]
            try:
                store.create_campaign(s, name, "clips", samples, raters_per_item=cfg.raters_per_item,
                                      instructions=cfg.human_instructions, gold=golds,
                                      gold_rate=cfg.gold_rate if golds else 0.0, seed=campaign_seed(cfg, round_))
            except store.FeedbackError as err:
                raise ConfigError(f"campaign {name!r}: {err.message}") from None
    finally:
        engine.dispose()
    return name


def _videos(cfg: ControlConfig, s, folder: Path, pool: Clips, clips: list[int], round_: int) -> dict[int, str]:
    """Each clip's video in the media folder: pool index -> sha256."""
    work = Path(cfg.out) / f".clips-round-{round_}"
    shutil.rmtree(work, ignore_errors=True)
    env = make_render_env(cfg.env, cfg.env_options)
    try:
        return {i: store.add_media(s, folder, render_clip(env, pool, i, work / str(pool.ids[i]), side=cfg.clip_video_size),
                                   move=True) for i in clips}
    finally:
        env.close()
        shutil.rmtree(work, ignore_errors=True)


def collect_answers(cfg: ControlConfig, name: str) -> list[Comparison]:
    """Step 3: the campaign's judgments once every item has its raters, else `Paused` with where
    raters go and the command that goes on."""
    db = feedback_db(cfg)
    engine, sessions = store.open_db(db, busy_timeout=CLI_BUSY_TIMEOUT_S)
    try:
        with sessions() as s:
            try:
                campaign = store.find_campaign(s, name)
            except store.NotFound:
                raise ConfigError(f"{cfg.out} waits for campaign {name!r}, which {db} no longer has: delete "
                                  f"{cfg.out} to start again") from None
            summary = next(x for x in reports.campaign_summaries(s) if x["id"] == campaign.id)
            if summary["complete_items"] < summary["items"]:
                raise Paused(waiting_message(summary, db, rerun_command(),
                                             str(cfg.feedback_media) if cfg.feedback_media else None))
            return reports.export_records(s, [campaign.id])
    finally:
        engine.dispose()


def votes(records: list[Comparison]) -> dict[str, list[float]]:
    """Pair id ("a|b") -> [votes for a, votes for b, equal, can't tell], over its regular items' judgments."""
    out: dict[str, list[float]] = {}
    for rec in records:
        if rec.meta.get("is_gold"):
            continue
        v = out.setdefault(str(rec.meta["item_source_id"]), [0.0, 0.0, 0.0, 0.0])
        tiers = rec.tiers()
        v[3 if rec.meta.get("abstained") else 2 if len(tiers) == 1 else tiers[0][0]] += 1
    return out


def vote_share(v: list[float]) -> float | None:
    """p(first clip better) from [for a, for b, equal, can't tell]; None without a vote."""
    n = v[0] + v[1] + v[2]
    return None if n == 0 else (v[0] + v[2] / 2) / n


@dataclass
class RoundLabels:
    pairs: list[tuple[int, int, float, bool]]  # (pool a, pool b, p, heldout) to train on
    records: list[dict]  # the round's lines of OUT/comparisons.jsonl
    synthetic_on_human: list[dict]  # the synthetic labeller's answers to the pairs people labelled
    human_labels: int  # pairs labelled by people


def labels_of(cfg: ControlConfig, plan: Plan, answers: list[Comparison], round_: int) -> RoundLabels:
    """The round's labels: the people's vote share on their pairs, the synthetic labeller's on
    the rest (mixed: also on the people's pairs that got no vote); the records of both."""
    tally = votes(answers)
    pairs, records, shadow, human_labels = [], [], [], 0
    for (a, b), to_people, heldout, syn in zip(plan.pairs, plan.human, plan.heldout, plan.synthetic):
        p = vote_share(tally.get(_pair_id(syn), [0, 0, 0, 0])) if to_people else None
        if p is not None:
            human_labels += 1
            shadow.append(syn)
        elif to_people and cfg.feedback == "human":
            continue  # every rater abstained: no label
        else:  # the synthetic labeller's answer: a mixed round's share, or its top-up of a pair nobody decided
            tiers = Comparison(**syn).tiers()
            p = 0.5 if len(tiers) == 1 else float(tiers[0] == [0])
            records.append({**syn, "meta": {**syn["meta"], **({"top_up": True} if to_people else {})}})
        pairs.append((a, b, p, heldout))
    heldout_of = {_pair_id(syn): h for syn, h in zip(plan.synthetic, plan.heldout)}
    for rec in answers:  # every judgment, gold and abstentions included (the quality tools read them)
        meta = {**rec.meta, "round": round_}
        if not rec.meta.get("is_gold"):
            meta["heldout"] = heldout_of.get(str(rec.meta["item_source_id"]))
        records.append(rec.model_copy(update={"meta": meta}).model_dump(mode="json", exclude_none=True))
    return RoundLabels(pairs, records, shadow, human_labels)


def _pair_id(record: dict) -> str:
    return "|".join(record["responses"])


def agreement(human: list[Comparison], synthetic: list[Comparison]) -> dict:
    """People's majority on each pair they decided against (a) the synthetic labeller's answer,
    (b) the order of the true returns: `ai_human_alignment` counts of each (`alignment` = the
    share of pairs both decided on which they agree)."""
    people = [r for r in human if r.source == "human" and not r.meta.get("abstained") and not r.meta.get("is_gold")]
    truth = [Comparison(**{**r.model_dump(exclude={"ranking", "p", "rater"}), "rater": "true return",
                           "ranking": _true_order(r.meta["true_returns"])}) for r in synthetic]
    return {"synthetic": ai_human_alignment(synthetic, people, bootstrap=0),
            "true_order": ai_human_alignment(truth, people, bootstrap=0)}


def waits_for_people(cfg: ControlConfig) -> bool:
    """OUT's checkpoint waits for a campaign of this very run (same options): go on from it. The
    same folder waiting with other options is a ConfigError (its campaign asks other questions)."""
    path = Path(cfg.out) / CHECKPOINT / "state.json"
    if cfg.feedback == "synthetic" or cfg.reward != "learned" or not path.exists():
        return False
    saved = json.loads(path.read_text(encoding="utf-8"))
    if saved.get("phase") != "asked":
        return False
    if saved["asked"]["campaign"] != campaign_name(cfg, saved["round"]):
        raise ConfigError(f"{cfg.out} waits for people on campaign {saved['asked']['campaign']!r}, asked with other "
                          "options: run the same command again, or choose another --out")
    return True


def feedback_agreement(out: Path) -> dict:
    """People against the synthetic labeller and the true-return order, on every pair so far (human.agreement)."""
    records = read_lines(out / "comparisons.jsonl", missing_ok=True)
    people = [Comparison(**r) for r in records if r.get("source") == "human"]
    synthetic = [Comparison(**r) for r in read_lines(out / SYNTHETIC_ANSWERS, missing_ok=True)]
    return agreement(people, synthetic)


def print_feedback(fb: dict) -> None:
    """The summary's lines on people's labels: where their quality report is, and their agreement."""
    console.print(f"the labels' quality report (people vs the synthetic labeller in it): {fb['quality_report']}",
                  highlight=False, soft_wrap=True)
    for name, a in (("the synthetic labeller", fb["agreement"]["synthetic"]),
                    ("the true-return order", fb["agreement"]["true_order"])):
        share = "-" if a["alignment"] is None else f"{a['alignment']:.3f}"
        console.print(f"people vs {name}: agreement {share} ({a['agree']} of {a['agree'] + a['disagree']} pairs both "
                      f"decided; people tied {a['human_ties']}, it tied {a['ai_ties']})", highlight=False,
                      soft_wrap=True)


def write_quality_report(out: Path) -> Path:
    """OUT/quality/report.html (and report.json): the feedback-quality report of the run's labels
    (people's agreement, gold accuracy, position bias, can't-tell answers) with the synthetic
    labeller's answers on the people's pairs in its "people vs the synthetic labeller" section."""
    from alignloop.data.io import read_records
    from alignloop.quality.report import analyse, write_report

    records = read_records(out / "comparisons.jsonl", Comparison)
    synthetic = read_records(out / SYNTHETIC_ANSWERS, Comparison) if (out / SYNTHETIC_ANSWERS).exists() else None
    return write_report(analyse(records, ai_records=synthetic), out / "quality")["html"]


def _true_order(returns: list[float]) -> list:
    a, b = returns
    return [[0, 1]] if a == b else ([0, 1] if a > b else [1, 0])
