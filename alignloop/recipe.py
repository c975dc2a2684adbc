"""Recipes: a YAML list of stages, validated and wired into the run folder by convention.

    name: quickstart
    model: smollm2-135m-instruct        # every stage's default base model
    seed: 0
    rounds: 1                            # > 1: generate -> feedback -> quality -> reward -> ppo again
    stages:
      - sft: {data: "{assets}/demonstrations.jsonl", epochs: 1}
      - generate: {prompts: "{assets}/prompts_train.jsonl", num_samples: 4}
      - stage: feedback                  # the long form: stage, name, with
        with: {kind: simulated, per_item: 3}
      ...

A stage's `with` holds the fields of that stage's own config class (`SFTConfig`, ...); the
inputs and outputs it leaves out are filled in from the run folder (DESIGN.md section 3):

    revise   -> RUN/revisions.jsonl (+ .demos.jsonl, .comparisons.jsonl)   [CAIReviseConfig]
    sft      -> RUN/sft                 data: the revise stage's demos    [SFTConfig]
    generate -> R/samples.jsonl          model: the newest policy          [GenerateConfig]
    feedback -> R/comparisons.jsonl      kind: simulated | ai | human      [SimulateConfig | CAILabelConfig |
                                         (human: a campaign in RUN/feedback.db)  FeedbackCreateConfig]
    quality  -> R/quality/, R/consensus.jsonl   with: {report: {...}, consensus: {...}}
    reward   -> R/reward                 data: consensus (else comparisons) [RewardConfig]
    ppo      -> R/ppo                    policy: newest policy, reward: R/reward, prompts: generate's
    evaluate -> RUN/eval                 policy: the last PPO, baseline: RUN/sft  [EvaluateConfig]
    report   -> RUN/report.html                                             [ReportConfig]

R is RUN for round 1 and RUN/round-r for round r > 1. Strings may use `{assets}` (the shipped
data folder), `{run}` (the run folder) and `{model}` (the recipe's model).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from alignloop.assets import asset_dir
from alignloop.config import DEFAULT_MODEL, ConfigError, build_config, load_yaml

StageKind = Literal["revise", "sft", "generate", "feedback", "quality", "reward", "ppo", "evaluate", "report"]
KINDS: tuple[str, ...] = StageKind.__args__
# 0: once, before the rounds; 1: once per round (the online loop); 2: once, after the last round
PHASE = {"revise": 0, "sft": 0, "generate": 1, "feedback": 1, "quality": 1, "reward": 1, "ppo": 1,
         "evaluate": 2, "report": 2}


class StageSpec(BaseModel):
    """One entry of `stages:`: `{stage: KIND, name: ..., with: {...}}` or the short `{KIND: {...}}`."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    stage: StageKind = Field(..., description="What the stage does.")
    name: str | None = Field(None, description="Name in messages, `--set NAME.field=...` and RUN/.stages/ (default: stage).")
    with_: dict[str, Any] = Field(default_factory=dict, alias="with", description="The stage config's fields.")

    @model_validator(mode="before")
    @classmethod
    def _short_form(cls, data: Any) -> Any:
        if isinstance(data, dict) and "stage" not in data and len(data) == 1:
            (kind, values), = data.items()
            return {"stage": kind, "with": values or {}}
        return data

    @property
    def id(self) -> str:
        return self.name or self.stage


class Recipe(BaseModel):
    """A whole run: the base model, the seed, the rounds of the online loop and the stages."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field("run", description="Name of the run (default run folder: runs/NAME).")
    model: str = Field(DEFAULT_MODEL, description="Base model of every stage that takes one.")
    seed: int = Field(0, description="Seed of every stage (round r samples with seed + r - 1).")
    rounds: int = Field(1, ge=1, description="Rounds of generate -> feedback -> quality -> reward -> ppo.")
    reward_data: Literal["all", "round"] = Field(
        "all", description="Rounds > 1: the reward model trains on every round's labels so far, or this round's.")
    stages: list[StageSpec] = Field(..., min_length=1, description="The stages, in order.")

    @model_validator(mode="after")
    def _order(self):
        seen: dict[str, int] = {}
        for i, s in enumerate(self.stages):
            if s.id in seen:
                raise ValueError(f"stages[{i}] ({s.id}): a second stage named {s.id!r}; give it another `name`")
            seen[s.id] = i
            if PHASE[s.stage] < max((PHASE[t.stage] for t in self.stages[:i]), default=0):
                raise ValueError(f"stages[{i}] ({s.id}): {s.stage} comes too late; the order is revise, sft, then "
                                 "generate / feedback / quality / reward / ppo (repeated per round), then evaluate, report")
        kinds = [s.stage for s in self.stages]
        if "revise" in kinds and "sft" in kinds and kinds.index("revise") > kinds.index("sft"):
            raise ValueError(f"stages[{kinds.index('revise')}]: revise must come before sft (sft trains on its demos)")
        for kind in set(kinds):
            if kinds.count(kind) > 1:
                raise ValueError(f"stages[{kinds.index(kind, kinds.index(kind) + 1)}]: more than one {kind} stage")
        return self

    def get(self, kind: str) -> StageSpec | None:
        return next((s for s in self.stages if s.stage == kind), None)


# ---------------------------------------------------------------- files, overrides, errors

def shipped_recipes() -> Path:
    return Path(str(files("alignloop") / "recipes"))


def find_recipe(name: str | Path) -> Path:
    """A recipe file: the path as given, else a shipped recipe of that file name or stem
    (`recipes/quickstart.yaml`, `quickstart.yaml` and `quickstart` all find the shipped one)."""
    path = Path(name)
    if path.is_file():
        return path
    stem = path.name.removesuffix(".yaml").removesuffix(".yml")
    shipped = shipped_recipes() / f"{stem}.yaml"
    if shipped.is_file():
        return shipped
    known = ", ".join(sorted(p.stem for p in shipped_recipes().glob("*.yaml")))
    raise ConfigError(f"{name}: no such recipe file (shipped recipes: {known})")


def apply_overrides(data: dict, overrides: list[str], where: str) -> dict:
    """`--set KEY=VALUE` (VALUE is YAML): `rounds=2`, `model=path`, `reward.epochs=2`,
    `quality.consensus.method=majority` (a stage by its name, then its `with` fields)."""
    data = {**data, "stages": [dict(s) if isinstance(s, dict) else s for s in data.get("stages") or []]}
    for item in overrides:
        key, eq, raw = item.partition("=")
        if not eq or not key:
            raise ConfigError(f"--set {item}: expected KEY=VALUE")
        value = yaml.safe_load(raw) if raw.strip() else ""
        head, _, rest = key.partition(".")
        if not rest:
            data[head] = value
            continue
        target = None
        for s in data["stages"]:
            if isinstance(s, dict) and "stage" not in s and len(s) == 1 and next(iter(s)) == head:
                s[head] = target = dict(s[head] or {})
            elif isinstance(s, dict) and (s.get("name") or s.get("stage")) == head:
                s["with"] = target = dict(s.get("with") or {})
        if target is None:
            raise ConfigError(f"--set {item}: no stage named {head!r} in {where}")
        *path, last = rest.split(".")
        for part in path:
            target[part] = target = dict(target.get(part) or {})
        target[last] = value
    return data


def _loc(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def load_recipe(path: str | Path, overrides: list[str] = ()) -> tuple[Recipe, Path]:
    """The validated recipe and its file; errors name the file, the stage and the field."""
    path = find_recipe(path)
    data = apply_overrides(load_yaml(path), list(overrides), str(path))
    try:
        return Recipe.model_validate(data), path
    except ValidationError as err:
        first = err.errors()[0]
        msg = first["msg"].removeprefix("Value error, ")
        loc = first["loc"]
        if len(loc) >= 2 and loc[0] == "stages" and isinstance(loc[1], int):
            where = f"stages[{loc[1]}]"
            raw = data["stages"][loc[1]]
            if isinstance(raw, dict):
                kind = raw.get("name") or raw.get("stage") or (next(iter(raw)) if len(raw) == 1 else None)
                where += f" ({kind})" if kind else ""
            field_ = _loc(loc[2:]).replace("with_", "with")
            raise ConfigError(f"{path}: {where}: " + (f"field '{field_}': " if field_ else "") + msg) from None
        if not loc:
            raise ConfigError(f"{path}: {msg}") from None
        raise ConfigError(f"{path}: field '{_loc(loc)}': {msg}") from None


# ---------------------------------------------------------------- wiring: one Step per stage and round

@dataclass
class Step:
    """One stage to run: a recipe stage in a round, with its resolved configs and outputs."""

    index: int  # position in the recipe's `stages`
    kind: str
    name: str  # unique in the run: the stage's name, "round-r/NAME" in round r > 1
    round: int
    configs: dict[str, Any]  # the stage configs it runs, e.g. {"sft": SFTConfig}
    outputs: list[Path]  # removed before the stage re-runs
    sources: list[Path] = field(default_factory=list)  # reward, reward_data all: every round's labels


def _fill(value: Any, subs: dict[str, str]) -> Any:
    if isinstance(value, str):
        for key, sub in subs.items():
            value = value.replace(key, sub)
        return value
    if isinstance(value, dict):
        return {k: _fill(v, subs) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill(v, subs) for v in value]
    return value


def round_dir(run: Path, r: int) -> Path:
    return run if r == 1 else run / f"round-{r}"


def plan(recipe: Recipe, run: Path, where: str) -> list[Step]:
    """Every stage in the order it runs: phase 0, then the loop stages once per round, then phase 2."""
    from alignloop.feedback.cli import FeedbackCreateConfig
    from alignloop.configs import (CAILabelConfig, CAIReviseConfig, EvaluateConfig, GenerateConfig, PPOConfig,
                                   ReportConfig, RewardConfig, SFTConfig)
    from alignloop.quality.cli import ConsensusConfig, QualityConfig, SimulateConfig, gold_path

    subs = {"{assets}": str(asset_dir()), "{run}": str(run), "{model}": recipe.model}
    has = {s.stage for s in recipe.stages}
    last = recipe.rounds
    seed = recipe.seed

    def start_policy() -> str:
        return str(run / "sft") if "sft" in has else recipe.model

    def policy_before(r: int) -> str:
        return str(round_dir(run, r - 1) / "ppo") if r > 1 and "ppo" in has else start_policy()

    def labels(r: int) -> Path:
        return round_dir(run, r) / ("consensus.jsonl" if "quality" in has else "comparisons.jsonl")

    def build(cls, spec: StageSpec, values: dict, defaults: dict, label: str):
        return build_config(cls, {**defaults, **values}, f"{where}: stages[{spec_index[spec.id]}] ({label})")

    spec_index = {s.id: i for i, s in enumerate(recipe.stages)}
    generate_spec = recipe.get("generate")
    steps: list[Step] = []

    def add(spec: StageSpec, r: int) -> None:
        w = _fill(dict(spec.with_), subs)
        R = round_dir(run, r)
        label = spec.id
        k = spec.stage
        sources: list[Path] = []
        if k == "revise":
            cfg = build(CAIReviseConfig, spec, w, {"model": recipe.model, "out": run / "revisions.jsonl", "seed": seed}, label)
            out = Path(cfg.out)
            configs, outputs = {k: cfg}, [out] + [out.with_suffix(s) for s in (".demos.jsonl", ".comparisons.jsonl", ".config.yaml")]
        elif k == "sft":
            defaults = {"model": recipe.model, "out": run / "sft", "seed": seed}
            if "revise" in has:
                defaults["data"] = Path(steps_by_kind("revise").configs["revise"].out).with_suffix(".demos.jsonl")
            cfg = build(SFTConfig, spec, w, defaults, label)
            configs, outputs = {k: cfg}, [Path(cfg.out)]
        elif k == "generate":
            cfg = build(GenerateConfig, spec, w, {"model": policy_before(r), "out": R / "samples.jsonl", "seed": seed + r - 1}, label)
            configs, outputs = {k: cfg}, [Path(cfg.out), Path(cfg.out).with_suffix(".config.yaml")]
        elif k == "feedback":
            kind = w.pop("kind", "simulated")
            where_kind = {"simulated": SimulateConfig, "ai": CAILabelConfig, "human": FeedbackCreateConfig}
            if kind not in where_kind:
                raise ConfigError(f"{where}: stages[{spec_index[spec.id]}] ({label}): field 'kind': "
                                  f"{kind!r} is not one of simulated, ai, human")
            if kind == "human":  # the campaign's own kind (rank | compare); thumbs give no comparisons
                w["kind"] = w.pop("campaign_kind", "rank")
                if w["kind"] not in ("rank", "compare"):
                    raise ConfigError(f"{where}: stages[{spec_index[spec.id]}] ({label}): field 'campaign_kind': "
                                      f"{w['kind']!r} is not one of rank, compare (the reward model needs rankings)")
            samples, out = R / "samples.jsonl", R / "comparisons.jsonl"
            defaults = {"simulated": {"samples": samples, "out": out, "seed": seed + r - 1},
                        "ai": {"judge": recipe.model, "data": samples, "out": out, "seed": seed + r - 1},
                        "human": {"db": str(run / "feedback.db"), "samples": samples, "seed": seed + r - 1}}[kind]
            cfg = build(where_kind[kind], spec, w, defaults, label)
            out = R / "comparisons.jsonl" if kind == "human" else Path(cfg.out)
            configs = {kind: cfg}
            outputs = [out, out.with_suffix(".config.yaml")] + ([gold_path(out)] if kind == "simulated" else [])
        elif k == "quality":
            data = R / "comparisons.jsonl"
            bad = set(w) - {"report", "consensus"}
            if bad:
                raise ConfigError(f"{where}: stages[{spec_index[spec.id]}] ({label}): field '{sorted(bad)[0]}': "
                                  "unknown option (known: report, consensus)")
            configs = {}
            if w.get("report", {}) is not False:
                configs["report"] = build(QualityConfig, spec, w.get("report") or {},
                                          {"data": data, "out": R / "quality", "seed": seed}, f"{label}.report")
            gold = {"gold_file": gold_path(data)} if (recipe.get("feedback") and
                                                      recipe.get("feedback").with_.get("kind", "simulated") == "simulated") else {}
            configs["consensus"] = build(ConsensusConfig, spec, w.get("consensus") or {},
                                         {"data": data, "out": R / "consensus.jsonl", "seed": seed, **gold},
                                         f"{label}.consensus")
            cons = Path(configs["consensus"].out)
            outputs = [R / "quality", cons, cons.with_suffix(".config.yaml")]
        elif k == "reward":
            data = labels(r)
            if r > 1 and recipe.reward_data == "all" and "feedback" in has:
                sources = [labels(q) for q in range(1, r + 1)]
                data = R / "reward-data.jsonl"
            cfg = build(RewardConfig, spec, w, {"model": recipe.model, "data": data, "out": R / "reward", "seed": seed}, label)
            configs, outputs = {k: cfg}, [Path(cfg.out)] + ([data] if sources else [])
        elif k == "ppo":
            defaults = {"model": policy_before(r), "out": R / "ppo", "seed": seed + r - 1}
            if "reward" in has:
                defaults["reward"] = str(R / "reward")
            if generate_spec and "prompts" in generate_spec.with_:
                defaults["prompts"] = _fill(generate_spec.with_["prompts"], subs)
            cfg = build(PPOConfig, spec, w, defaults, label)
            configs, outputs = {k: cfg}, [Path(cfg.out)]
        elif k == "evaluate":
            final = str(round_dir(run, last) / "ppo") if "ppo" in has else start_policy()
            defaults = {"policy": final, "out": run / "eval", "seed": seed}
            if "ppo" in has and "sft" in has:
                defaults["baseline"] = str(run / "sft")
            if "ppo" in has and last > 1:
                defaults["reference"] = start_policy()  # KL of all rounds together, not of the last one
            cfg = build(EvaluateConfig, spec, w, defaults, label)
            configs, outputs = {k: cfg}, [Path(cfg.out)]
        else:  # report
            R = round_dir(run, last)
            defaults = {"run": run, "out": run / "report.html", "title": f"alignloop run: {recipe.name}",
                        **({"quality": R / "quality", "reward": R / "reward", "ppo": R / "ppo"} if last > 1 else {})}
            evaluate = next((s for s in steps if s.kind == "evaluate"), None)
            if evaluate is not None:
                defaults["eval"] = evaluate.configs["evaluate"].out
            cfg = build(ReportConfig, spec, w, defaults, label)
            configs, outputs = {k: cfg}, [Path(cfg.out)]
        name = spec.id if PHASE[k] != 1 or r == 1 else f"round-{r}/{spec.id}"
        steps.append(Step(spec_index[spec.id], k, name, r, configs, outputs, sources))

    def steps_by_kind(kind: str) -> Step:
        return next(s for s in steps if s.kind == kind)

    for spec in recipe.stages:
        if PHASE[spec.stage] == 0:
            add(spec, 1)
    for r in range(1, last + 1):
        for spec in recipe.stages:
            if PHASE[spec.stage] == 1:
                add(spec, r)
    for spec in recipe.stages:
        if PHASE[spec.stage] == 2:
            add(spec, last)
    return steps
