"""`alignloop cai revise | label | score`: AI feedback as files for the other stages.

    revise  SL-CAI critique -> revision; writes OUT (one record per prompt with every step),
            OUT.demos.jsonl (demonstrations for `alignloop sft`) and OUT.comparisons.jsonl
            (the final revision preferred over the original response);
    label   RL-CAI soft labels for pairs of responses: comparisons with `source: ai` and `p`;
    score   d-RLAIF: adds `rewards: {NAME: [...]}` (in [-1, 1]) to samples records;
    import  the CAI paper's JSON prompt files -> a constitution YAML for --constitution.
Each saves its resolved config beside its output (OUT with suffix .config.yaml).
"""

from __future__ import annotations

import random
import time
from itertools import combinations
from pathlib import Path
from typing import Any

import click
from pydantic import model_validator

from alignloop.config import config_command, save_config
from alignloop.configs import CAIImportConfig, CAILabelConfig, CAIReviseConfig, CAIScoreConfig
from alignloop.data.records import PromptRecord

class PairsInput(PromptRecord):
    """Input of `cai label`: a prompt and K >= 2 responses (samples, comparisons, chosen/rejected)."""

    responses: list[str]

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        if isinstance(data, dict) and "responses" not in data and "chosen" in data and "rejected" in data:
            data = {**data, "responses": [data["chosen"], data["rejected"]]}
        return data

    @model_validator(mode="after")
    def _two(self):
        if len(self.responses) < 2:
            raise ValueError("field 'responses': need at least 2 responses to compare")
        return self


def _load(name: str, cfg) -> tuple[Any, Any]:
    from alignloop.models.loading import load_causal_lm, load_tokenizer, pick_device

    return load_causal_lm(name, cfg.dtype, pick_device(cfg.device)), load_tokenizer(name)


def run_revise(cfg: CAIReviseConfig) -> Path:
    from alignloop.cai.constitution import load_constitution
    from alignloop.cai.revise import comparison, critique_and_revise, demonstrations, helpful_demonstrations, \
        trajectory_record
    from alignloop.data.io import read_records, write_jsonl
    from alignloop.models.generation import Sampling

    constitution = load_constitution(cfg.constitution)
    records = read_records(cfg.prompts, PromptRecord)[: cfg.limit]
    helpful = read_records(cfg.helpful, PromptRecord)[: cfg.limit] if cfg.helpful else []
    model, tokenizer = _load(cfg.model, cfg)
    sampling = Sampling(temperature=cfg.temperature, top_p=cfg.top_p, max_new_tokens=cfg.max_new_tokens,
                        batch_size=cfg.batch_size)
    start = time.perf_counter()
    trajs = critique_and_revise(model, tokenizer, [r.chat() for r in records], constitution, cfg.revisions,
                                sampling, cfg.seed, cfg.few_shot)
    demos = [d for i, (r, t) in enumerate(zip(records, trajs)) for d in demonstrations(r, t, i)]
    demos += helpful_demonstrations(model, tokenizer, helpful, cfg.helpful_samples, sampling, cfg.seed)
    comps = [c for i, (r, t) in enumerate(zip(records, trajs)) if (c := comparison(r, t, i, cfg.model))]
    out = Path(cfg.out)
    write_jsonl(out, [trajectory_record(r, t, i) for i, (r, t) in enumerate(zip(records, trajs))])
    write_jsonl(out.with_suffix(".demos.jsonl"), demos)
    write_jsonl(out.with_suffix(".comparisons.jsonl"), comps)
    save_config(cfg, out.with_suffix(".config.yaml"))
    fallbacks = sum(st.fallback for t in trajs for st in t.steps)
    print(f"revised {len(records)} prompts x {cfg.revisions} steps in {time.perf_counter() - start:.1f} s; "
          f"{fallbacks} empty revisions kept the previous response")
    print(f"wrote {out}, {len(demos)} demonstrations to {out.with_suffix('.demos.jsonl')} "
          f"({len(demos) - sum(d['meta']['kind'] == 'helpful' for d in demos)} revisions), "
          f"{len(comps)} comparisons to {out.with_suffix('.comparisons.jsonl')}")
    return out


def label_items(records: list[PairsInput], all_pairs: bool) -> list[tuple[PairsInput, int, int, float]]:
    """(record, i, j, weight) per pair to label: every pair of K responses with weight 1/C(K,2)
    (one prompt counts once, as InstructGPT's K-way loss), or only the first two."""
    items = []
    for rec in records:
        pairs = list(combinations(range(len(rec.responses)), 2)) if all_pairs else [(0, 1)]
        items += [(rec, i, j, 1.0 / len(pairs)) for i, j in pairs]
    return items


def run_label(cfg: CAILabelConfig) -> Path:
    from alignloop.cai.constitution import load_constitution
    from alignloop.cai.judge import PreferenceJudge, label_summary
    from alignloop.data.io import read_records, write_jsonl
    from alignloop.models.generation import Sampling

    constitution = load_constitution(cfg.constitution)
    records = read_records(cfg.data, PairsInput)[: cfg.limit]
    items = label_items(records, cfg.all_pairs)
    model, tokenizer = _load(cfg.judge, cfg)
    judge = PreferenceJudge(model, tokenizer, constitution, cfg.judge, cfg.batch_size, cfg.few_shot)
    cot_sampling = Sampling(temperature=cfg.temperature, max_new_tokens=cfg.cot_max_new_tokens, seed=cfg.seed,
                            batch_size=cfg.batch_size)
    start = time.perf_counter()
    labels = judge.label([(r.chat(), r.responses[i], r.responses[j]) for r, i, j, _ in items],
                         random.Random(cfg.seed), cfg.principles_per_pair, cfg.cot, cot_sampling,
                         (cfg.cot_clamp_low, cfg.cot_clamp_high))
    seconds = time.perf_counter() - start
    rows = []
    for n, ((rec, i, j, weight), lab) in enumerate(zip(items, labels)):
        rid = rec.id or f"pair-{n}"
        rows.append({"id": rid if weight == 1.0 else f"{rid}:{i}-{j}", **rec.prompt_fields(),
                     "responses": [rec.responses[i], rec.responses[j]], "p": round(lab.p, 6),
                     "rater": cfg.judge, "source": "ai", "weight": weight,
                     "meta": {**rec.meta, **lab.meta(cfg.cot), "pair": [i, j]}})
    write_jsonl(cfg.out, rows)
    save_config(cfg, Path(cfg.out).with_suffix(".config.yaml"))
    s = label_summary(labels)
    print(f"labeled {s['labeled']} pairs in {seconds:.1f} s ({seconds / max(1, len(labels)):.2f} s per label, "
          f"{cfg.principles_per_pair} principle(s), both orders{', CoT' if cfg.cot else ''})")
    if labels:
        print(f"mean |p - 0.5| = {s['mean_abs_p_minus_half']:.3f}; flips with order (same position preferred "
              f"in both orders): {s['flip_rate']:.1%}; P(first position wins) = {s['p_first_position']:.3f}")
    print(f"wrote {len(rows)} comparisons to {cfg.out}")
    return Path(cfg.out)


def run_score(cfg: CAIScoreConfig) -> Path:
    from alignloop.cai.constitution import load_constitution
    from alignloop.cai.direct import DirectJudge
    from alignloop.data.io import read_records, write_records
    from alignloop.data.records import Samples

    records = read_records(cfg.data, Samples)[: cfg.limit]
    model, tokenizer = _load(cfg.judge, cfg)
    judge = DirectJudge(model, tokenizer, load_constitution(cfg.constitution), name=cfg.name,
                        batch_size=cfg.batch_size)
    start = time.perf_counter()
    flat = [(r.chat(), resp) for r in records for resp in r.responses]
    rewards = judge.score([c for c, _ in flat], [x for _, x in flat])
    seconds = time.perf_counter() - start
    rows, k = [], 0
    for r in records:
        row = r.model_dump(mode="json", exclude_none=True)
        row["rewards"] = {**(r.rewards or {}), cfg.name: [round(x, 6) for x in rewards[k: k + len(r.responses)]]}
        k += len(r.responses)
        rows.append(row)
    write_records(cfg.out, rows)
    save_config(cfg, Path(cfg.out).with_suffix(".config.yaml"))
    mean = sum(rewards) / len(rewards)
    print(f"scored {len(rewards)} responses in {seconds:.1f} s ({seconds / len(rewards):.2f} s each); "
          f"mean reward {mean:+.3f}, range [{min(rewards):+.3f}, {max(rewards):+.3f}]; wrote {cfg.out}")
    return Path(cfg.out)


def run_import(cfg: CAIImportConfig) -> Path:
    import yaml

    from alignloop.cai.constitution import from_paper_layout
    from alignloop.config import ConfigError
    from alignloop.data.io import atomic_path

    if cfg.critiques is None and cfg.choices is None:
        raise ConfigError("command line: give --critiques and/or --choices")
    c = from_paper_layout(cfg.critiques, cfg.choices, cfg.few_shot, cfg.label_few_shot, cfg.name)
    with atomic_path(cfg.out) as tmp:
        tmp.write_text(yaml.safe_dump(c.model_dump(mode="json", exclude_none=True), sort_keys=False,
                                      allow_unicode=True, width=110), encoding="utf-8")
    print(f"wrote {cfg.out}: {len(c.revision_principles())} critique/revision principles, "
          f"{len(c.choice_principles())} choice principles, {len(c.few_shot)} + {len(c.label_few_shot)} examples")
    return Path(cfg.out)


@click.group("cai", context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
def group():
    """Constitutional AI: critique-and-revise (SL-CAI) and AI preference labels (RL-CAI), d-RLAIF scores."""


group.add_command(config_command(CAIReviseConfig, run_revise, "revise",
                                 help="SL-CAI: answer, then critique and revise under a principle sampled at "
                                      "each step; writes demonstrations and comparisons."))
group.add_command(config_command(CAILabelConfig, run_label, "label",
                                 help="RL-CAI: soft labels p from a judge's (A)/(B) probabilities, both orders "
                                      "averaged; writes comparisons with source: ai."))
group.add_command(config_command(CAIScoreConfig, run_score, "score",
                                 help="d-RLAIF: rate each response 1..10; adds rewards[NAME] in [-1, 1] to samples."))
group.add_command(config_command(CAIImportConfig, run_import, "import",
                                 help="Convert the CAI paper's JSON prompt files into a constitution YAML."))
