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
inputs and outputs it leaves out are filled in from the run folder by convention: each stage's
row in stages.py says how (its wiring is listed there). Strings may use `{assets}` (the
shipped data folder), `{run}` (the run folder) and `{model}` (the recipe's model).
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from alignloop.assets import asset_dir
from alignloop.config import DEFAULT_MODEL, ConfigError, build_config, load_yaml, parse_yaml
from alignloop.stages import STAGES, FieldError, Step, Wiring


class StageSpec(BaseModel):
    """One entry of `stages:`: `{stage: KIND, name: ..., with: {...}}` or the short `{KIND: {...}}`."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    stage: str = Field(..., description="What the stage does: a row of stages.STAGES.")
    name: str | None = Field(None, description="Name in messages, `--set NAME.field=...` and RUN/.stages/ (default: stage).")
    with_: dict[str, Any] = Field(default_factory=dict, alias="with", description="The stage config's fields.")

    @model_validator(mode="before")
    @classmethod
    def _short_form(cls, data: Any) -> Any:
        if isinstance(data, dict) and "stage" not in data and len(data) == 1:
            (kind, values), = data.items()
            return {"stage": kind, "with": values or {}}
        return data

    @field_validator("stage")
    @classmethod
    def _known(cls, kind: str) -> str:
        if kind not in STAGES:
            raise ValueError(f"{kind!r} is not one of {', '.join(STAGES)}")
        return kind

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
            if STAGES[s.stage].phase < max((STAGES[t.stage].phase for t in self.stages[:i]), default=0):
                order = [" / ".join(k for k, row in STAGES.items() if row.phase == p) for p in (0, 1, 2)]
                raise ValueError(f"stages[{i}] ({s.id}): {s.stage} comes too late; the order is {order[0]}, then "
                                 f"{order[1]} (repeated per round), then {order[2]}")
        kinds = [s.stage for s in self.stages]
        for kind in kinds:
            for before, why in STAGES[kind].after.items():
                if before in kinds and kinds.index(before) > kinds.index(kind):
                    raise ValueError(f"stages[{kinds.index(before)}]: {before} must come before {kind} ({why})")
        for kind in set(kinds):
            if kinds.count(kind) > 1:
                raise ValueError(f"stages[{kinds.index(kind, kinds.index(kind) + 1)}]: more than one {kind} stage")
        return self


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
        value = parse_yaml(raw) if raw.strip() else ""
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


# ---------------------------------------------------------------- planning: one Step per stage and round

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


def plan(recipe: Recipe, run: Path, where: str) -> list[Step]:
    """Every stage in the order it runs: phase 0, then the loop stages once per round, then phase 2.
    Each stage's config is its `with:` fields over the defaults its row in stages.py wires in."""
    subs = {"{assets}": str(asset_dir()), "{run}": str(run), "{model}": recipe.model}
    w = Wiring(recipe.name, run, recipe.model, recipe.seed, recipe.rounds, recipe.reward_data,
               {s.stage: _fill(dict(s.with_), subs) for s in recipe.stages})

    def add(index: int, spec: StageSpec, r: int) -> None:
        row, values = STAGES[spec.stage], _fill(dict(spec.with_), subs)
        label = f"{where}: stages[{index}] ({spec.id}"

        def build(cls, values: dict, defaults: dict, part: str | None = None):
            return build_config(cls, {**defaults, **values}, label + (f".{part})" if part else ")"))

        try:
            if row.configure is not None:
                configs, outputs = row.configure(w, values, r, build)
            else:
                cfg = build(row.config, values, row.defaults(w, r))
                configs, outputs = {spec.stage: cfg}, row.outputs(cfg)
        except FieldError as err:
            raise ConfigError(f"{label}): {err}") from None
        sources = row.sources(w, r) if row.sources else []
        outputs += [Path(configs[spec.stage].data)] if sources else []
        name = spec.id if row.phase != 1 or r == 1 else f"round-{r}/{spec.id}"
        w.steps.append(Step(index, spec.stage, name, r, configs, outputs, sources))

    indexed = list(enumerate(recipe.stages))
    for i, spec in indexed:
        if STAGES[spec.stage].phase == 0:
            add(i, spec, 1)
    for r in range(1, recipe.rounds + 1):
        for i, spec in indexed:
            if STAGES[spec.stage].phase == 1:
                add(i, spec, r)
    for i, spec in indexed:
        if STAGES[spec.stage].phase == 2:
            add(i, spec, recipe.rounds)
    return w.steps
