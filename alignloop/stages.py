"""The stages a recipe can hold: one row each in `STAGES`, the one table that says what a stage
is, when it runs, what it reads and writes, and what runs it.

    Stage(kind, describe, phase, config, run, defaults, outputs, resumable, done)

recipe.py plans a recipe's steps from it (each stage's config, with the inputs and outputs it
leaves out wired into the run folder); pipeline.py runs them (fingerprints, skipping what is
done, resuming). Adding a stage is one row here plus the module its `run` names. The run
functions are named "module:function" and imported only when their stage runs, so this
module, like the configs, never imports torch.

The wiring (DESIGN.md section 3); R is RUN in round 1 and RUN/round-r in round r > 1:

    revise   -> RUN/revisions.jsonl (+ .demos.jsonl, .comparisons.jsonl)   [CAIReviseConfig]
    sft      -> RUN/sft                 data: the revise stage's demos    [SFTConfig]
    generate -> R/samples.jsonl          model: the newest policy          [GenerateConfig]
    feedback -> R/comparisons.jsonl      kind: simulated | ai | human | chat  [SimulateConfig | CAILabelConfig |
                                         (human: a campaign in RUN/feedback.db)  FeedbackCreateConfig |
                                         (chat: votes from alignloop chat; thumbs: R/thumbs.jsonl)  ChatRoundConfig]
    quality  -> R/quality/, R/consensus.jsonl   with: {report: {...}, consensus: {...}}
    reward   -> R/reward                 data: consensus (else comparisons) [RewardConfig]
    ppo      -> R/ppo                    model: newest policy, reward: R/reward, prompts: generate's
    dpo      -> R/dpo                    model: the SFT policy, data: consensus (else comparisons) [DPOConfig]
    kto      -> R/kto                    the same, comparisons converted to binary feedback  [KTOConfig]
    arena    -> R/arena.sh               the commands serving R's new policy beside the last  [ArenaRoundConfig]
    evaluate -> RUN/eval                 policy: the last PPO, baseline: RUN/sft  [EvaluateConfig]
                                         (with dpo / kto stages: policies {ppo, dpo, kto} side by side)
    report   -> RUN/report.html                                             [ReportConfig]
    control  -> RUN/control              a Gymnasium task from clip preferences (control/)  [ControlConfig]
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from pydantic import BaseModel

from alignloop.configs import (CAIReviseConfig, ControlConfig, DPOConfig, EvaluateConfig, GenerateConfig, KTOConfig,
                               PPOConfig, ReportConfig, RewardConfig, SFTConfig)
from alignloop.feedback.chat_round import ArenaRoundConfig


@dataclass
class Step:
    """One stage to run: a recipe stage in a round, with its resolved configs and outputs."""

    index: int  # position in the recipe's `stages`
    kind: str
    name: str  # unique in the run: the stage's name, "round-r/NAME" in round r > 1
    round: int
    configs: dict[str, Any]  # the stage configs it runs, e.g. {"sft": SFTConfig}
    outputs: list[Path]  # removed before the stage re-runs
    sources: list[Path] = field(default_factory=list)  # files concatenated into its config's `data` first


@dataclass
class Wiring:
    """What a stage's defaults may use: the recipe's settings and the steps planned before it."""

    name: str  # the recipe's name
    run: Path
    model: str  # the recipe's base model
    seed: int
    rounds: int
    reward_data: str  # all | round
    withs: dict[str, dict]  # kind -> the stage's `with:` fields as written ({assets}, {run}, {model} filled)
    steps: list[Step] = field(default_factory=list)

    def round_dir(self, r: int) -> Path:
        return self.run if r == 1 else self.run / f"round-{r}"

    def has(self, kind: str) -> bool:
        return kind in self.withs

    def start_policy(self) -> str:
        return str(self.run / "sft") if self.has("sft") else self.model

    def policy_before(self, r: int) -> str:
        """The newest policy when round r starts: the previous round's PPO output, else the start."""
        return str(self.round_dir(r - 1) / "ppo") if r > 1 and self.has("ppo") else self.start_policy()

    def labels(self, r: int) -> Path:
        return self.round_dir(r) / "consensus.jsonl" if self.has("quality") else self.feedback_out(r)

    def feedback_out(self, r: int) -> Path:
        """The feedback stage's file: comparisons.jsonl (thumbs.jsonl: chat thumbs)."""
        return self.round_dir(r) / ("thumbs.jsonl" if self.chat_labels() == "thumbs" else "comparisons.jsonl")

    def chat_labels(self) -> str | None:
        """comparisons | thumbs with `feedback: {kind: chat}`, else None."""
        fb = self.withs.get("feedback", {})
        return fb.get("labels", "comparisons") if fb.get("kind") == "chat" else None

    def trained(self, r: int) -> str:
        """The policy round r trains (ppo, else dpo, else kto); round 0's is the start policy."""
        kind = next((k for k in ("ppo", "dpo", "kto") if self.has(k)), None)
        return str(self.round_dir(r) / kind) if r >= 1 and kind else self.start_policy()

    def planned(self, kind: str) -> Step | None:
        return next((s for s in self.steps if s.kind == kind), None)


class FieldError(ValueError):
    """A bad field of a stage's `with:`; the planner adds the file and the stage."""

    def __init__(self, field_: str, message: str):
        super().__init__(f"field '{field_}': {message}")


# build(config class, with values, defaults, part=None) -> the validated config (errors name the stage)
Build = Callable[..., BaseModel]


@dataclass(frozen=True)
class Context:
    """What running a step may need besides its configs."""

    resume: bool  # continue from the stage's checkpoint
    fingerprint: str
    recipe: str  # the recipe's name
    command: str  # the command that runs this recipe again (for messages)


def _none(w: Wiring, r: int) -> dict[str, Any]:
    return {}


def _out(cfg) -> list[Path]:
    return [Path(cfg.out)]


@dataclass(frozen=True)
class Stage:
    """One row of the table."""

    kind: str
    describe: str | Callable[["Step"], str]  # the runner's title: "stage 3/8: feedback — rankings of the
    # samples" (a function of the step where it depends on its configs)
    phase: int  # 0: once, before the rounds; 1: once per round (the online loop); 2: once, after the last round
    config: type[BaseModel] | None  # the class of its `with:` fields (None: `configure` builds the configs)
    run: str | Callable | None  # "module:function" (or a function) called with the config (None: `execute`)
    defaults: Callable[[Wiring, int], dict[str, Any]] = _none  # fields wired from the run folder; `with:` wins
    outputs: Callable[[Any], list[Path]] = _out  # removed before it re-runs; done when they exist (*.yaml,
    # *.gold.jsonl apart)
    resumable: bool = False  # an interrupted run continues from OUT/checkpoint with --resume
    done: str | None = None  # resumable: the file in OUT that marks it finished (and no checkpoint left)
    after: dict[str, str] = field(default_factory=dict)  # kind that must come before it in the recipe -> why
    sources: Callable[[Wiring, int], list[Path]] | None = None  # files concatenated into `data` before it runs
    configure: Callable[[Wiring, dict, int, Build], tuple[dict[str, BaseModel], list[Path]]] | None = None
    execute: Callable[[Step, Context], None] | None = None  # runs a stage whose `configure` built its configs


def call(run: str | Callable, *args: Any) -> Any:
    """Call a run function given as "module:function" (looked up now, so a patched one is seen)."""
    if callable(run):
        return run(*args)
    module, _, name = run.partition(":")
    return getattr(importlib.import_module(module), name)(*args)


# ---------------------------------------------------------------- the wiring of each stage

def _sft(w: Wiring, r: int) -> dict[str, Any]:
    defaults = {"model": w.model, "out": w.run / "sft", "seed": w.seed}
    if w.has("revise"):
        defaults["data"] = Path(w.planned("revise").configs["revise"].out).with_suffix(".demos.jsonl")
    return defaults


def _reward_sources(w: Wiring, r: int) -> list[Path]:
    """Rounds > 1 with reward_data: all: every round's labels so far."""
    if r > 1 and w.reward_data == "all" and w.has("feedback"):
        return [w.labels(q) for q in range(1, r + 1)]
    return []


def _reward(w: Wiring, r: int) -> dict[str, Any]:
    data = w.round_dir(r) / "reward-data.jsonl" if _reward_sources(w, r) else w.labels(r)
    return {"model": w.model, "data": data, "out": w.round_dir(r) / "reward", "seed": w.seed}


def _ppo(w: Wiring, r: int) -> dict[str, Any]:
    defaults = {"model": w.policy_before(r), "out": w.round_dir(r) / "ppo", "seed": w.seed + r - 1}
    if w.has("reward"):
        defaults["reward"] = str(w.round_dir(r) / "reward")
    if "prompts" in w.withs.get("generate", {}):
        defaults["prompts"] = w.withs["generate"]["prompts"]
    elif w.chat_labels() and not w.has("generate"):  # the chat users' messages
        defaults["prompts"] = w.round_dir(r) / "prompts.jsonl"
    return defaults


def _direct(kind: str):
    """dpo / kto: the SFT policy (not the newest) trained on the round's labels."""
    def defaults(w: Wiring, r: int) -> dict[str, Any]:
        return {"model": w.start_policy(), "data": w.labels(r), "out": w.round_dir(r) / kind, "seed": w.seed + r - 1}

    return defaults


def _evaluate(w: Wiring, r: int) -> dict[str, Any]:
    final = str(w.round_dir(w.rounds) / "ppo") if w.has("ppo") else w.start_policy()
    direct = [k for k in ("dpo", "kto") if w.has(k)]
    if direct:  # several policies side by side against the SFT baseline
        return {"policies": {k: str(w.round_dir(w.rounds) / k) for k in ("ppo", *direct) if w.has(k)},
                "out": w.run / "eval", "seed": w.seed, **({"baseline": str(w.run / "sft")} if w.has("sft") else {})}
    defaults = {"policy": final, "out": w.run / "eval", "seed": w.seed}
    if w.has("ppo") and w.has("sft"):
        defaults["baseline"] = str(w.run / "sft")
    if w.has("ppo") and w.rounds > 1:
        defaults["reference"] = w.start_policy()  # KL of all rounds together, not of the last one
    return defaults


def _report(w: Wiring, r: int) -> dict[str, Any]:
    last = w.round_dir(w.rounds)
    defaults = {"run": w.run, "out": w.run / "report.html", "title": f"alignloop run: {w.name}",
                **({"quality": last / "quality", "reward": last / "reward", "ppo": last / "ppo"} if w.rounds > 1 else {})}
    if w.planned("evaluate") is not None:
        defaults["eval"] = w.planned("evaluate").configs["evaluate"].out
    return defaults


def _with_sidecars(*suffixes: str) -> Callable[[Any], list[Path]]:
    def outputs(cfg) -> list[Path]:
        out = Path(cfg.out)
        return [out, *(out.with_suffix(s) for s in suffixes)]

    return outputs


FEEDBACK_KINDS = ("simulated", "ai", "human", "chat")


def _chat_feedback(w: Wiring, values: dict, r: int, build: Build) -> tuple[dict[str, BaseModel], list[Path]]:
    """feedback kind chat: the votes of the chat's users (feedback/chat_round.py)."""
    from alignloop.feedback.chat_round import ChatRoundConfig

    if w.chat_labels() == "thumbs" and (w.has("reward") or w.has("dpo")):
        raise FieldError("labels", "thumbs train kto only; reward and dpo need comparisons (labels: comparisons)")
    arena = w.withs.get("arena", {})
    policies = {f"round-{q}": w.trained(q) for q in (r - 2, r - 1) if q >= 0}
    R = w.round_dir(r)
    cfg = build(ChatRoundConfig, values, {
        "db": str(w.run / "feedback.db"), "out": w.feedback_out(r), "prompts": R / "prompts.jsonl",
        "previous": [w.feedback_out(q) for q in range(1, r)], "policies": policies, "round": r, "seed": w.seed,
        **{k: arena[k] for k in ("port", "chat_port") if k in arena}})
    return {"chat": cfg}, [cfg.out, cfg.out.with_suffix(".config.yaml"), cfg.prompts]


def _arena(w: Wiring, r: int) -> dict[str, Any]:
    db = w.withs.get("feedback", {}).get("db", str(w.run / "feedback.db"))
    return {"db": db, "policies": {f"round-{r - 1}": w.trained(r - 1), f"round-{r}": w.trained(r)}, "round": r,
            "out": w.round_dir(r) / "arena.sh"}


FEEDBACK_TITLES = {"simulated": "simulated raters' rankings of the samples", "ai": "an AI judge's rankings of the samples",
                   "human": "people's rankings of the samples", "chat": "votes from the chat"}


def _feedback_title(step: Step) -> str:
    """The feedback stage's title by its kind (its config's key): 'votes from the chat', ..."""
    return FEEDBACK_TITLES.get(next(iter(step.configs), ""), "labels of the samples")


def title(step: Step) -> str:
    """What the runner prints after 'stage i/n: NAME — '."""
    describe = STAGES[step.kind].describe
    return describe(step) if callable(describe) else describe


def _feedback(w: Wiring, values: dict, r: int, build: Build) -> tuple[dict[str, BaseModel], list[Path]]:
    """feedback: `kind` picks the source: a simulated panel, an AI judge, or people (a campaign)."""
    from alignloop.configs import CAILabelConfig
    from alignloop.feedback.cli import FeedbackCreateConfig
    from alignloop.quality.cli import SimulateConfig, gold_path

    kind = values.pop("kind", "simulated")
    if kind not in FEEDBACK_KINDS:
        raise FieldError("kind", f"{kind!r} is not one of {', '.join(FEEDBACK_KINDS)}")
    if kind == "chat":
        return _chat_feedback(w, values, r, build)
    if kind == "human":  # the campaign's own kind (rank | compare); thumbs give no comparisons
        values["kind"] = values.pop("campaign_kind", "rank")
        if values["kind"] not in ("rank", "compare"):
            raise FieldError("campaign_kind", f"{values['kind']!r} is not one of rank, compare "
                                              "(the reward model needs rankings)")
    R = w.round_dir(r)
    samples, out, seed = R / "samples.jsonl", R / "comparisons.jsonl", w.seed + r - 1
    cls, defaults = {"simulated": (SimulateConfig, {"samples": samples, "out": out, "seed": seed}),
                     "ai": (CAILabelConfig, {"judge": w.model, "data": samples, "out": out, "seed": seed}),
                     "human": (FeedbackCreateConfig, {"db": str(w.run / "feedback.db"), "samples": samples,
                                                      "seed": seed})}[kind]
    cfg = build(cls, values, defaults)
    out = out if kind == "human" else Path(cfg.out)
    return {kind: cfg}, [out, out.with_suffix(".config.yaml")] + ([gold_path(out)] if kind == "simulated" else [])


def _run_feedback(step: Step, ctx: Context) -> None:
    (kind, cfg), = step.configs.items()
    if kind == "human":
        from alignloop.campaign import run_campaign

        run_campaign(cfg, f"{cfg.name or ctx.recipe + '/' + step.name}-{ctx.fingerprint[:8]}", step.outputs[0],
                     ctx.command)
    elif kind == "chat":
        call("alignloop.feedback.chat_round:run_chat_round", cfg, ctx.command)
    else:
        call({"simulated": "alignloop.quality.cli:run_simulate", "ai": "alignloop.cai.cli:run_label"}[kind], cfg)


def _quality(w: Wiring, values: dict, r: int, build: Build) -> tuple[dict[str, BaseModel], list[Path]]:
    """quality: `with: {report: {...} | false, consensus: {...}}`, the two quality commands."""
    from alignloop.quality.cli import ConsensusConfig, QualityConfig, gold_path

    bad = set(values) - {"report", "consensus"}
    if bad:
        raise FieldError(sorted(bad)[0], "unknown option (known: report, consensus)")
    R = w.round_dir(r)
    data = R / "comparisons.jsonl"
    configs: dict[str, BaseModel] = {}
    if values.get("report", {}) is not False:
        configs["report"] = build(QualityConfig, values.get("report") or {},
                                  {"data": data, "out": R / "quality", "seed": w.seed}, "report")
    simulated = w.has("feedback") and w.withs["feedback"].get("kind", "simulated") == "simulated"
    configs["consensus"] = build(ConsensusConfig, values.get("consensus") or {},
                                 {"data": data, "out": R / "consensus.jsonl", "seed": w.seed,
                                  **({"gold_file": gold_path(data)} if simulated else {})}, "consensus")
    cons = Path(configs["consensus"].out)
    return configs, [R / "quality", cons, cons.with_suffix(".config.yaml")]


def _run_quality(step: Step, ctx: Context) -> None:
    if "report" in step.configs:
        call("alignloop.quality.cli:run_report", step.configs["report"])
    call("alignloop.quality.cli:run_consensus", step.configs["consensus"])


# ---------------------------------------------------------------- the table

STAGES: dict[str, Stage] = {s.kind: s for s in [
    Stage("revise", "SL-CAI critique and revision", 0, CAIReviseConfig, "alignloop.cai.cli:run_revise",
          defaults=lambda w, r: {"model": w.model, "out": w.run / "revisions.jsonl", "seed": w.seed},
          outputs=_with_sidecars(".demos.jsonl", ".comparisons.jsonl", ".config.yaml")),
    Stage("sft", "supervised fine-tuning on demonstrations", 0, SFTConfig, "alignloop.train.sft:run_sft",
          defaults=_sft, resumable=True, done="alignloop_model.json", after={"revise": "sft trains on its demos"}),
    Stage("generate", "sampling responses from the newest policy", 1, GenerateConfig, "alignloop.generate:run_generate",
          defaults=lambda w, r: {"model": w.policy_before(r), "out": w.round_dir(r) / "samples.jsonl",
                                 "seed": w.seed + r - 1},
          outputs=_with_sidecars(".config.yaml")),
    Stage("feedback", _feedback_title, 1, None, None, configure=_feedback, execute=_run_feedback),
    Stage("quality", "feedback quality report and consensus labels", 1, None, None, configure=_quality,
          execute=_run_quality),
    Stage("reward", "reward model", 1, RewardConfig, "alignloop.train.reward:run_reward", defaults=_reward,
          resumable=True, done="reward_config.json", sources=_reward_sources),
    Stage("ppo", "PPO against the reward model", 1, PPOConfig, "alignloop.train.ppo:run_ppo", defaults=_ppo,
          resumable=True, done="alignloop_model.json"),
    Stage("control", "a control task learned from clip preferences", 0, ControlConfig, "alignloop.control.cli:run_control",
          defaults=lambda w, r: {"out": w.run / "control", "seed": w.seed, "feedback_db": str(w.run / "feedback.db")},
          resumable=True, done="summary.json"),  # people's campaigns outlive a re-run of the stage
    Stage("dpo", "direct preference optimisation of the SFT policy on the labels", 1, DPOConfig,
          "alignloop.train.dpo:run_dpo", defaults=_direct("dpo"), resumable=True, done="alignloop_model.json"),
    Stage("kto", "KTO of the SFT policy on the labels (as binary feedback)", 1, KTOConfig,
          "alignloop.train.kto:run_kto", defaults=_direct("kto"), resumable=True, done="alignloop_model.json"),
    Stage("arena", "the commands that serve the new policy beside the last in the arena", 1, ArenaRoundConfig,
          "alignloop.feedback.chat_round:run_arena", defaults=_arena, outputs=lambda cfg: [Path(cfg.out)]),
    Stage("evaluate", "policy vs baseline on held-out prompts", 2, EvaluateConfig,
          "alignloop.evaluate.evaluate:run_evaluate", defaults=_evaluate),
    Stage("report", "HTML report", 2, ReportConfig, "alignloop.evaluate.report:run_report", defaults=_report),
]}
