"""Preference-based RL on two of the paper's MuJoCo tasks (Christiano et al. 2017): alignloop's
control loop against `imitation` 1.0.1's PreferenceComparisons and against PPO on the true reward.

    .venv/bin/python benchmarks/control_pbrl.py --quick        # about 10 minutes on 2 cores
    nice -n 19 .venv/bin/python benchmarks/control_pbrl.py     # the full run (an hour or more)

Tasks: Reacher-v5 (easy) and HalfCheetah-v5 (locomotion); neither ends episodes early, so every
clip is a full 25 steps. For each task, seed and label budget (700, 1,400; --quick: 700):
  - alignloop: `alignloop control --env TASK --labels N` (disagreement queries, 3-member ensemble);
  - imitation: PreferenceComparisons (benchmarks/control_pbrl_imitation.py) in a SEPARATE virtual
    environment, .venv-imitation/, made on the first run: imitation==1.0.1 installed without its
    dependency pins on the same gymnasium, mujoco and stable-baselines3 versions as .venv (its own
    pins, gymnasium 0.29, have no v5 tasks), so the env version is the same;
and once per task and seed PPO on the true reward (`alignloop control --reward true`). All use the
same env steps, rounds (the task's: Reacher-v5 13 of 16,384 steps, HalfCheetah-v5 8 of 63,488;
--quick 8 of 4,096; --rounds), fragment length (25 steps), label budget and PPO hyperparameters
(`AGENT`), and the same evaluation: the deterministic policy's episodes from reset seeds 10000, 10001, ... (100 on
Reacher-v5, 5 on HalfCheetah-v5; --eval-episodes), their mean and its standard error; "share" is
a run's gain over the untrained policy as a part of PPO-on-true-reward's gain (the same seed; the
target at 1,400 labels is 0.9). Each run is its own process; printed: final true return, wall
seconds and peak RSS per run, and a table; everything also goes to --out (results.jsonl, one line
per run).
`--set FIELD=VALUE` changes an `alignloop control` option in alignloop's runs only (e.g.
`--systems alignloop --set label_decay=0`), to try a change against the same baselines.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VENV = ROOT / ".venv-imitation"
IMITATION = "imitation==1.0.1"

# eval_episodes: the final (and every round's) evaluation. Reacher's return depends much on where its target
# is drawn: over 5 episodes its standard error is about 0.6 on a gain of about 7 (a share +-0.1 from where the
# targets fell), over 100 about 0.2-0.3, at 5,000 env steps a round. Over HalfCheetah's 1,000-step episodes
# the standard error of 5 is about 1-3% of the return: 5 are enough.
# rounds: how often the reward is refitted (every system gets the task's rounds, of whole PPO rollouts of 2,048 steps).
# Reacher-v5: 13 rounds of 16,384 steps; over nine seeds alignloop reached 0.88 +- 0.15 of the gain of PPO on the
# true reward in 13 rounds (0.80 +- 0.11 of its gain in 8), where 8 rounds of 26,624 (the same 212,992 steps) reached
# 0.49 +- 0.12. HalfCheetah-v5: 8 rounds of 63,488 steps (31 rounds of 16,384, the same 507,904 steps, took twice the
# wall time and did not help on two seeds).
TASKS = {"Reacher-v5": {"steps": 200_000, "quick_steps": 32_768, "rounds": 13, "quick_rounds": 8, "eval_episodes": 100},
         "HalfCheetah-v5": {"steps": 500_000, "quick_steps": 32_768, "rounds": 8, "quick_rounds": 8,
                            "eval_episodes": 5}}
# one PPO setting for every run (stable-baselines3 defaults but a smaller rollout, for small budgets)
AGENT = {"n_envs": 4, "n_steps": 512, "batch_size": 64, "n_epochs": 10, "learning_rate": 3e-4, "gamma": 0.99,
         "gae_lambda": 0.95, "ent_coef": 0.0}
FRAGMENT, INITIAL_SHARE = 25, 0.25


def budget(task: str, quick: bool) -> tuple[int, int]:
    """(env steps, rounds) of every system on `task`: its full or its --quick setting."""
    spec = TASKS[task]
    return (spec["quick_steps"], spec["quick_rounds"]) if quick else (spec["steps"], spec["rounds"])

RSS_RUNNER = """import json, resource, sys
from alignloop.control.cli import run_control
from alignloop.config import resolve_config
from alignloop.configs import ControlConfig
cfg = resolve_config(ControlConfig, None, json.loads(sys.argv[1]))
s = run_control(cfg)
print(json.dumps({"true_return": s["true_return_after"], "true_return_se": s["true_return_after_se"],
                  "true_return_before": s["true_return_before"], "seconds": s["seconds"], "env_steps": s["env_steps"],
                  "labels": s["labels"], "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}))
"""


def ensure_imitation_venv() -> Path:
    """.venv-imitation with imitation 1.0.1 on .venv's own gymnasium / mujoco / sb3 / torch versions."""
    python = VENV / "bin" / "python"
    if python.exists() and subprocess.run([python, "-c", "import imitation"], capture_output=True).returncode == 0:
        return python
    lock = ROOT / "requirements.lock"
    pins = {line.split("==")[0].lower(): line.strip() for line in lock.read_text().splitlines() if "==" in line}
    pip = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    subprocess.run(pip + [pins["torch"]], check=True)
    subprocess.run(pip + ["-c", str(lock), "gymnasium[mujoco]", "stable-baselines3", "mujoco", "tqdm",
                          "scikit-learn", "datasets", "psutil"], check=True)
    subprocess.run(pip + ["--no-deps", IMITATION], check=True)
    return python


def run(cmd: list[str], log: Path) -> dict:
    t0 = time.time()
    with open(log, "w") as err:
        r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=err, text=True,
                           env={**os.environ, "ALIGNLOOP_NO_PROGRESS": "1", "MUJOCO_GL": "egl"}, cwd=log.parent)
    if r.returncode != 0:
        return {"error": f"exit {r.returncode}, see {log}", "wall_s": round(time.time() - t0, 1)}
    return {**json.loads(r.stdout.strip().splitlines()[-1]), "wall_s": round(time.time() - t0, 1)}  # process wall time


def parse_settings(ap: argparse.ArgumentParser, pairs: list[str]) -> dict:
    """`--set FIELD=VALUE` pairs -> {field: value}; each field one of ControlConfig's, each value
    read as YAML as `alignloop run --set` reads it (`config.parse_yaml`: 0 -> 0, random -> "random"),
    checked by ControlConfig itself."""
    from pydantic import ValidationError

    from alignloop.config import parse_yaml
    from alignloop.configs import ControlConfig

    settings = {}
    for pair in pairs:
        field, eq, value = pair.partition("=")
        field = field.strip().replace("-", "_")
        if not eq or field not in ControlConfig.model_fields:
            ap.error(f"--set {pair}: expected FIELD=VALUE with FIELD an `alignloop control` option")
        if field in ("env", "out", "seed", "labels", "reward"):
            ap.error(f"--set {pair}: {field} is set by the benchmark itself")
        settings[field] = parse_yaml(value)
    try:
        ControlConfig(env="Reacher-v5", out="x", **settings)
    except ValidationError as e:
        ap.error(f"--set: {e.errors()[0]['loc'][0]}: {e.errors()[0]['msg']}")
    return settings


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="700 labels, 32,768 env steps per task, seed 0 (~10 min)")
    ap.add_argument("--seeds", default="0", help="comma-separated seeds")
    ap.add_argument("--tasks", default=",".join(TASKS), help="comma-separated Gymnasium ids")
    ap.add_argument("--labels", default=None, help="comma-separated label budgets (default 700,1400; --quick 700)")
    ap.add_argument("--systems", default="true,alignloop,imitation",
                    help="comma-separated: true (PPO on the true reward), alignloop, imitation")
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", dest="settings",
                    help="an `alignloop control` option for alignloop's runs only, by its config field (e.g. "
                         "--set label_decay=0 --set queries=random; repeatable): a change tried against the same "
                         "baselines, in the results as `settings`")
    ap.add_argument("--eval-episodes", type=int, default=None, metavar="N",
                    help="deterministic evaluation episodes of every run (default per task: Reacher-v5 100, "
                         "HalfCheetah-v5 5)")
    ap.add_argument("--rounds", type=int, default=None, metavar="N",
                    help="rounds of every system (default per task: Reacher-v5 13, HalfCheetah-v5 8; --quick 8)")
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "control_pbrl")
    args = ap.parse_args()
    settings = parse_settings(ap, args.settings)
    if args.eval_episodes is not None and args.eval_episodes < 1:
        ap.error(f"--eval-episodes {args.eval_episodes}: at least 1")
    if args.rounds is not None and args.rounds < 2:
        ap.error(f"--rounds {args.rounds}: at least 2 (imitation trains after its initial comparisons and once "
                 "per further round)")
    args.out = args.out.resolve()  # each run's process starts in its own folder
    systems = set(args.systems.split(","))
    if not systems <= {"true", "alignloop", "imitation"}:
        ap.error(f"--systems {args.systems}: each one of true, alignloop, imitation")
    budgets = [int(x) for x in (args.labels or ("700" if args.quick else "700,1400")).split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    args.out.mkdir(parents=True, exist_ok=True)
    imitation_python = ensure_imitation_venv() if "imitation" in systems else None
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor())
    print(f"CPU: {cpu}, {os.cpu_count()} cores; python {platform.python_version()}", flush=True)
    results = []
    for task in args.tasks.split(","):
        steps, rounds = budget(task, args.quick)
        rounds = args.rounds or rounds
        episodes = args.eval_episodes or TASKS[task]["eval_episodes"]
        for seed in seeds:
            base = {"env": task, "total_steps": steps, "rounds": rounds, "fragment_length": FRAGMENT,
                    "initial_label_share": INITIAL_SHARE, "eval_episodes": episodes, "seed": seed,
                    "use_sde": False, "agent_learning_rate": AGENT["learning_rate"],
                    **{k: v for k, v in AGENT.items() if k != "learning_rate"}}
            jobs = [("PPO, true reward", None, [sys.executable, "-c", RSS_RUNNER, json.dumps(
                {**base, "reward": "true", "out": str(args.out / f"{task}-s{seed}-true")})])]
            for n in budgets:
                jobs.append(("alignloop", n, [sys.executable, "-c", RSS_RUNNER, json.dumps(
                    {**base, **settings, "labels": n, "out": str(args.out / f"{task}-s{seed}-alignloop-{n}")})]))
                spec = {"env": task, "steps": steps, "labels": n, "rounds": rounds, "fragment_length": FRAGMENT,
                        "initial_share": INITIAL_SHARE, "eval_episodes": episodes, "seed": seed,
                        "agent": dict(AGENT)}
                jobs.append(("imitation 1.0.1", n, [str(imitation_python), str(ROOT / "benchmarks" / "control_pbrl_imitation.py"),
                                                    json.dumps(spec)]))
            jobs = [j for j in jobs if {"PPO, true reward": "true", "alignloop": "alignloop"}.get(j[0], "imitation") in systems]
            for name, n, cmd in jobs:
                log = args.out / f"{task}-s{seed}-{name.split()[0].replace(',', '')}-{n or 0}.log"
                row = {"task": task, "seed": seed, "system": name, "labels": n or 0, **run(cmd, log),
                       **({"settings": settings} if name == "alignloop" and settings else {})}
                results.append(row)
                with open(args.out / "results.jsonl", "a") as f:
                    f.write(json.dumps(row) + "\n")
                print(json.dumps(row), flush=True)
    print("\n| task | seed | system | labels | env steps | final true return ± SE | share | wall s | peak RSS MB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        ret = f"{r['true_return']:.2f} ± {r.get('true_return_se', 0):.2f}" if "true_return" in r else r.get("error", "-")
        system = r["system"] + "".join(f" {k}={v}" for k, v in r.get("settings", {}).items())
        print(f"| {r['task']} | {r['seed']} | {system} | {r['labels']} | {r.get('env_steps', '-'):,} | {ret} | "
              f"{share(r, results)} | {r['wall_s']} | {r.get('peak_rss_mb', '-')} |")


def share(row: dict, results: list[dict]) -> str:
    """(return - untrained) / (PPO-on-true-reward's return - untrained), against the same task and seed's
    true-reward run (its own untrained policy: every system starts from the same seeded agent); "-"
    without one."""
    true = next((r for r in results if r["system"] == "PPO, true reward" and r["task"] == row["task"]
                 and r["seed"] == row["seed"] and "true_return" in r), None)
    if (true is None or "true_return" not in row or row is true or true.get("true_return_before") is None
            or true["true_return"] == true["true_return_before"]):
        return "-"
    return f"{(row['true_return'] - true['true_return_before']) / (true['true_return'] - true['true_return_before']):.2f}"

if __name__ == "__main__":
    main()
