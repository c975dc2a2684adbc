"""`alignloop run RECIPE.yaml`: every stage of a recipe in order, cached in the run folder, resumable.

For each stage (recipe.py turns the recipe into steps with resolved configs):
  1) fingerprint = sha256 of (its resolved config, the contents of the files it reads from
     outside the run folder, the fingerprint of the stage before it); a stage's output depends
     on everything before it, so changing one stage re-runs it and every stage after it;
  2) RUN/.stages/NAME.json says `done` with the same fingerprint, its outputs exist and no stage
     before it ran this time: skipped;
  3) otherwise its old outputs are removed and it runs, marked `running` meanwhile; with
     `--resume`, a stage left `running` with the same fingerprint continues from its checkpoint
     (the resumable stages of stages.py: sft, reward, ppo) or runs again (the others);
  4) human feedback makes a campaign in RUN/feedback.db and pauses the run until the
     campaign is complete; running the recipe again re-checks it and goes on. A stage that
     pauses itself for people (control with `feedback: human | mixed`) is marked `waiting`
     and, unchanged, goes on from its checkpoint on the next run, its outputs kept.
Fields that change how a stage runs but not what it makes (resume, stop_at_step,
stop_at_iteration, stop_at_round, keep_checkpoint) are left out of the fingerprint.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import time
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import click
import yaml

from alignloop import metric_names as M
from alignloop.feedback.waiting import EXIT_WAITING, Paused
from alignloop.recipe import load_recipe, plan
from alignloop.stages import STAGES, Context, Step, call, title as stage_title

NOT_FINGERPRINTED = {"resume", "stop_at_step", "stop_at_iteration", "stop_at_round", "keep_checkpoint"}
EXIT_STOPPED = 4  # EXIT_WAITING (3): paused for people (feedback/waiting.py)


@dataclass
class RunResult:
    status: str  # done | waiting | stopped
    run: Path
    ran: list[str]  # stages that ran this time
    skipped: list[str]  # stages found done and unchanged
    message: str = ""


# ---------------------------------------------------------------- fingerprints and state

_file_hashes: dict[tuple, str] = {}


def _path_hash(path: Path) -> str:
    """A file's content hash; a folder's hash of its files' names, sizes and modification times."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _file_hashes:
        h = hashlib.sha256()
        if path.is_dir():
            for f in sorted(p for p in path.rglob("*") if p.is_file()):
                s = f.stat()
                h.update(f"{f.relative_to(path)}:{s.st_size}:{s.st_mtime_ns}\n".encode())
        else:
            with path.open("rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    h.update(block)
        _file_hashes[key] = h.hexdigest()
    return _file_hashes[key]


def _cwd_and_parents() -> set[Path]:
    cwd = Path.cwd().resolve()
    return {cwd, *cwd.parents}


def _external_inputs(value: Any, run: Path, found: dict[str, str]) -> None:
    """Hashes of the paths in a config (strings or comma-separated reward sources) that exist outside RUN."""
    if isinstance(value, dict):
        for v in value.values():
            _external_inputs(v, run, found)
    elif isinstance(value, list):
        for v in value:
            _external_inputs(v, run, found)
    elif isinstance(value, str) and value:
        for part in value.split(","):
            part = part.split("*", 1)[-1].strip() if "*" in part else part.strip()
            path = Path(part)
            try:
                here = path.resolve()
                if not path.exists() or here.is_relative_to(run.resolve()) or here in _cwd_and_parents():
                    continue
            except OSError:
                continue
            found[part] = _path_hash(path)


def _relative(value: Any, run: str) -> Any:
    """Paths inside the run folder written as {run}/..., so a moved or copied run folder keeps its cache."""
    if isinstance(value, dict):
        return {k: _relative(v, run) for k, v in value.items()}
    if isinstance(value, list):
        return [_relative(v, run) for v in value]
    if isinstance(value, str) and (value == run or value.startswith(run + "/")):
        return "{run}" + value[len(run):]
    return value


def _is_choice(annotation: Any) -> bool:
    """A Literal type (or a Literal | None): the field holds one of fixed words, never a path."""
    if typing.get_origin(annotation) is Literal:
        return True
    args = typing.get_args(annotation) if typing.get_origin(annotation) in (typing.Union, types.UnionType) else ()
    return bool(args) and all(_is_choice(a) or a is type(None) for a in args)


def fingerprint(step: Step, before: str, run: Path) -> str:
    configs = {k: {f: _relative(v, str(run)) for f, v in c.model_dump(mode="json").items() if f not in NOT_FINGERPRINTED}
               for k, c in step.configs.items()}
    # Files read from outside RUN join the hash; a choice field's word is not a file, even where a
    # folder of that name is in the working directory (`format: alignloop` beside the source tree
    # hashed the whole package, so any code edit re-ran the quality stage of every copied run).
    # A config's `live_inputs` (a chat database that grows while the run waits) are named, not hashed.
    choices = {k: {f for f, info in type(c).model_fields.items() if _is_choice(info.annotation)}
               | getattr(type(c), "live_inputs", frozenset()) for k, c in step.configs.items()}
    inputs: dict[str, str] = {}
    _external_inputs({k: {f: v for f, v in cfg.items() if f not in choices[k]} for k, cfg in configs.items()}, run, inputs)
    blob = json.dumps({"stage": step.kind, "configs": configs, "inputs": inputs, "before": before}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def _state_path(run: Path, step: Step) -> Path:
    return run / ".stages" / (step.name.replace("/", ".") + ".json")


def read_state(run: Path, step: Step) -> dict:
    path = _state_path(run, step)
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}


def _write_state(run: Path, step: Step, **state) -> None:
    from alignloop.data.io import atomic_path

    with atomic_path(_state_path(run, step)) as tmp:
        Path(tmp).write_text(json.dumps({"stage": step.kind, "round": step.round, **state}, indent=1), encoding="utf-8")


def _remove(paths: list[Path]) -> None:
    for p in paths:
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()


# ---------------------------------------------------------------- running one stage

def complete(step: Step) -> bool:
    """Did the stage finish (a training stage told to stop early leaves a checkpoint and no model)?"""
    from alignloop.train.checkpoint import has_checkpoint

    row = STAGES[step.kind]
    if row.resumable:
        out = Path(step.configs[step.kind].out)
        return (out / row.done).exists() and not has_checkpoint(out)
    return all(p.exists() for p in step.outputs if p.suffix != ".yaml" and not p.name.endswith(".gold.jsonl"))


def execute(step: Step, ctx: Context) -> None:
    """Run the stage's run function(s) in this process, as its row in stages.py says."""
    row = STAGES[step.kind]
    if row.execute is not None:
        row.execute(step, ctx)
        return
    (cfg,) = step.configs.values()
    if step.sources:  # e.g. rounds > 1 with reward_data: all: every round's labels so far
        Path(cfg.data).write_text("".join(p.read_text(encoding="utf-8") for p in step.sources), encoding="utf-8")
    call(row.run, cfg.model_copy(update={"resume": ctx.resume}) if row.resumable else cfg)


# ---------------------------------------------------------------- the run

def run_recipe(recipe_file: str | Path, out: str | Path | None = None, resume: bool = False,
               overrides: list[str] = (), keep_done: bool = False) -> RunResult:
    from alignloop.data.io import atomic_path
    from alignloop.progress import console

    recipe, path = load_recipe(recipe_file, overrides)
    run = Path(out) if out else Path("runs") / recipe.name
    steps = plan(recipe, run, str(path))
    command = (f"alignloop run {path} --out {run}" + "".join(f" --set {o}" for o in overrides)
               + (" --keep-done" if keep_done else ""))
    run.mkdir(parents=True, exist_ok=True)
    resolved = {**recipe.model_dump(mode="json", by_alias=True, exclude={"stages"}), "recipe": str(path),
                "stages": [{"name": s.name, "stage": s.kind, "round": s.round,
                            **{k: c.model_dump(mode="json") for k, c in s.configs.items()}} for s in steps]}
    text = yaml.safe_dump(resolved, sort_keys=False, allow_unicode=True)
    if not (run / "config.yaml").exists() or (run / "config.yaml").read_text(encoding="utf-8") != text:
        with atomic_path(run / "config.yaml") as tmp:
            Path(tmp).write_text(text, encoding="utf-8")

    ran, skipped, before = [], [], ""
    for i, step in enumerate(steps, 1):
        fp = fingerprint(step, before, run)
        before = fp
        state = read_state(run, step)
        same = state.get("fingerprint") == fp
        title = f"stage {i}/{len(steps)}: {step.name} — {stage_title(step)}"
        done = state.get("status") == "done" and complete(step) and not ran
        if done and (same or keep_done):
            if not same:  # kept as it is: the stages after it compare against what it was made with
                before = state["fingerprint"]
            why = f"unchanged: {fp[:10]}" if same else "kept by --keep-done, though its config or inputs changed"
            console.print(f"[dim]{title}: skipped (done, {why})[/dim]", soft_wrap=True)
            skipped.append(step.name)
            continue
        console.rule(f"[bold]{title}")
        # a stage that paused for people (unchanged) goes on from where it waits, outputs kept
        waiting = same and state.get("status") == "waiting"
        carry_on = waiting or (resume and same and state.get("status") == "running" and STAGES[step.kind].resumable)
        if same and state.get("status") == "running" and not resume:
            console.print(f"{step.name} was interrupted; it starts again (--resume continues from its checkpoint)")
        if not carry_on:
            _remove(step.outputs)
        t0 = time.time()
        _reset_peak_rss()
        _write_state(run, step, status="waiting" if waiting or "human" in step.configs else "running", fingerprint=fp)
        try:
            execute(step, Context(carry_on and STAGES[step.kind].resumable and _has_checkpoint(step), fp, recipe.name,
                                  command))
        except Paused as err:
            _write_state(run, step, status="waiting", fingerprint=fp)
            console.print(f"[bold yellow]run paused at {step.name}[/bold yellow]: {err}", soft_wrap=True, highlight=False)
            return RunResult("waiting", run, ran, skipped, str(err))
        except KeyboardInterrupt:
            console.print(f"\ninterrupted during {step.name}; continue with: {command} --resume", soft_wrap=True)
            raise
        if not complete(step):
            msg = f"{step.name} stopped before finishing; continue with: {command} --resume"
            console.print(msg, soft_wrap=True)
            return RunResult("stopped", run, ran, skipped, msg)
        _write_state(run, step, status="done", fingerprint=fp, seconds=round(time.time() - t0, 1),
                     peak_rss_gb=_peak_rss_gb())
        ran.append(step.name)
    summary(run, steps, ran, skipped)
    return RunResult("done", run, ran, skipped)


def _reset_peak_rss() -> None:
    """Start the process's peak-RSS counter (VmHWM) afresh, so each stage's peak is its own (Linux)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def _peak_rss_gb() -> float | None:
    """The process's peak RSS since `_reset_peak_rss`, GB (None where /proc is not there)."""
    try:
        line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith("VmHWM:"))
    except (OSError, StopIteration):
        return None
    return round(int(line.split()[1]) / 1024**2, 3)


def _has_checkpoint(step: Step) -> bool:
    from alignloop.train.checkpoint import has_checkpoint

    return has_checkpoint(Path(step.configs[step.kind].out))


def headline(run: Path, steps: list[Step]) -> dict:
    """Gold reward of the PPO policy and of the SFT policy, KL, reward-model held-out accuracy."""
    from alignloop.train.tracking import read_metrics

    out: dict[str, Any] = {}
    ev = next((s for s in steps if s.kind == "evaluate"), None)
    if ev and (Path(ev.configs["evaluate"].out) / "eval.json").exists():
        e = json.loads((Path(ev.configs["evaluate"].out) / "eval.json").read_text(encoding="utf-8"))
        for role in ("policy", "baseline"):
            if role in e:
                out[f"gold_{role}"] = (e[role].get("gold") or {}).get("mean")
                out[f"kl_{role}"] = e[role].get("kl_k1")
                out[f"harmless_{role}"] = e[role]["harmlessness"]["rate"]
                out[f"refusal_margin_{role}"] = e[role].get("refusal_margin")
        out["win_rate_gold"] = (e.get("win_rate") or {}).get("gold")
        out["gold_gain"] = (e.get("win_rate") or {}).get("gold_gain")
        if "methods" in e:  # several policies side by side (a compare recipe)
            out["methods"] = e["methods"]
    rw = [s for s in steps if s.kind == "reward"]
    if rw and (Path(rw[-1].configs["reward"].out) / "metrics.jsonl").exists():
        rows = read_metrics(rw[-1].configs["reward"].out)
        values = [m[M.EVAL_ACCURACY] for m in rows if m.get(M.EVAL_ACCURACY) is not None]
        if values:  # hard pairs and soft labels alike (algorithms.reward_metrics.pairwise_accuracy)
            out["reward_accuracy"] = values[-1]
    return out


def summary(run: Path, steps: list[Step], ran: list[str], skipped: list[str]) -> None:
    from alignloop.progress import console

    h = headline(run, steps)
    console.rule("[bold]done")
    times = {s.name: read_state(run, s).get("seconds") for s in steps}
    console.print(f"{len(ran)} stages ran, {len(skipped)} unchanged and skipped; stage seconds: "
                  + ", ".join(f"{n} {t:.0f}" for n, t in times.items() if t is not None))
    report = next((Path(s.configs["report"].out) for s in steps if s.kind == "report"), None)
    if report:
        console.print(f"report: {report}")

    def f(v):
        return "-" if v is None else f"{v:.3f}"

    if "gold_policy" in h:
        console.print(f"gold reward: PPO policy {f(h['gold_policy'])} vs SFT policy {f(h.get('gold_baseline'))}"
                      + (f" (gold win rate {f(h['win_rate_gold'])})" if h.get("win_rate_gold") is not None else ""))
        if h.get("gold_gain") and h["gold_gain"]["se"] is not None:
            from alignloop.evaluate.evaluate import gain_line

            console.print(gain_line(h["gold_gain"]))
        console.print(f"KL to the reference: {f(h['kl_policy'])} nats per response; harmlessness "
                      f"{f(h['harmless_policy'])} vs {f(h.get('harmless_baseline'))}")
        if h.get("refusal_margin_baseline"):
            from alignloop.evaluate.evaluate import margin_cell

            m = h["refusal_margin_baseline"]
            console.print("the reward model on the SFT policy's held-out answers, a refusal minus the other answers "
                          f"to its prompt (above on k of n prompts): red-team {margin_cell(m['redteam'])}, ordinary "
                          f"{margin_cell(m['ordinary'])}")
    for name, m in (h.get("methods") or {}).items():
        g, cost = m.get("gain"), m.get("cost") or {}
        console.print(f"{name}: gold {f(m['gold'])}" + (f", gain {g['gain']:+.3f} ± {g['se']:.3f} over the baseline"
                                                        if g and g.get("se") is not None else "")
                      + f", KL {f(m['kl_k1'])}, harmlessness {f(m['harmlessness'])}"
                      + (f", trained in {cost['seconds']:.0f} s" if cost.get("seconds") else ""))
    if "reward_accuracy" in h:
        console.print(f"reward model held-out accuracy: {f(h['reward_accuracy'])}")


# ---------------------------------------------------------------- the command

@click.command("run", context_settings={"max_content_width": 110})
@click.argument("recipe")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Run folder (default: runs/RECIPE-NAME).")
@click.option("--resume", is_flag=True, help="Continue an interrupted stage from its last checkpoint.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a recipe value (YAML): rounds=2, model=PATH, reward.epochs=2, quality.consensus.method=majority.")
@click.option("--keep-done", is_flag=True,
              help="Never re-run a finished stage, even when its config or inputs changed (after upgrading alignloop, "
                   "or with a policy people are already voting on); only the stages not yet done run.")
def command(recipe: str, out: Path | None, resume: bool, overrides: tuple[str, ...], keep_done: bool) -> None:
    """Run a recipe (a YAML list of stages; shipped: quickstart, cai, compare, control, chat) into a run folder.

    Finished stages whose config and inputs are unchanged are skipped; a changed stage re-runs
    with every stage after it (--keep-done keeps every finished stage as it is). Exit status 3: paused for human feedback; 4: a stage stopped early.
    """
    result = run_recipe(recipe, out, resume, list(overrides), keep_done)
    if result.status != "done":
        sys.exit(EXIT_WAITING if result.status == "waiting" else EXIT_STOPPED)
