"""PPO iteration time and peak memory on the bundled SmolLM2-135M-Instruct (CPU or GPU).

Configuration of the yardstick (DESIGN.md section 5): batch 8 prompts, 32 new tokens, 4 PPO
epochs, 1 minibatch, a reward model scoring every response, a value function. TRL 1.12's
PPOTrainer in that configuration (full fine-tuning, separate reference / reward / value
models) took 30.0 s per iteration and 7.5 GB peak RSS on the 2-core CPU this project is
developed on. Each variant runs in its own process so its peak RSS is its own:

    python benchmarks/ppo_step.py                      # full fine-tuning and LoRA, fp32 and bf16
    python benchmarks/ppo_step.py --variants full-fp32 --iterations 6

Prints seconds per iteration (mean of the iterations after the first: steady state),
episodes/s and peak RSS per variant.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

VARIANTS = {
    "full-fp32": {"lora": False, "mixed_precision": "no"},
    "full-bf16": {"lora": False, "mixed_precision": "bf16"},
    "lora-fp32": {"lora": True, "mixed_precision": "no"},
    "lora-bf16": {"lora": True, "mixed_precision": "bf16"},
}


def make_reward_model(folder: Path) -> None:
    """An (untrained) reward model on the bundled backbone: scoring costs what a trained one costs."""
    from alignloop.models.loading import load_causal_lm, load_tokenizer
    from alignloop.models.reward_model import RewardNet, save_reward_model

    name = "smollm2-135m-instruct"
    save_reward_model(RewardNet(load_causal_lm(name)), load_tokenizer(name), folder, base=name,
                      mean=[0.0], std=[1.0], max_length=256)


def child(variant: str, iterations: int, work: Path) -> None:
    os.environ["ALIGNLOOP_NO_PROGRESS"] = "1"
    from alignloop import metric_names as M
    from alignloop.assets import asset
    from alignloop.train.ppo import PPOConfig, run_ppo
    from alignloop.train.tracking import read_metrics

    out = work / variant
    run_ppo(PPOConfig(model="smollm2-135m-instruct", reward=str(work / "rm"), prompts=asset("prompts_train.jsonl"),
                      out=out, iterations=iterations, batch_size=8, max_new_tokens=32, ppo_epochs=4, minibatches=1,
                      micro_batch_size=8, learning_rate=1e-5 if not VARIANTS[variant]["lora"] else 1e-4,
                      save_every=0, log_samples_every=0, **VARIANTS[variant]))
    m = read_metrics(out)
    steady = m[1:] or m
    per_it = sum(x[M.ITERATION_S] for x in steady) / len(steady)
    phases = {k: sum(x[k] for x in steady) / len(steady) for k in steady[0] if k.startswith("time/") and k.endswith("_s")}
    rss_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    print(json.dumps({"variant": variant, "s_per_iteration": per_it, "episodes_per_s": 8 / per_it,
                      "peak_rss_gb": rss_gb, "phases": phases}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated: " + ", ".join(VARIANTS))
    parser.add_argument("--iterations", type=int, default=4, help="PPO iterations per variant (the first is warm-up)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.iterations, Path(args.work))
        return
    work = Path(tempfile.mkdtemp(prefix="ppo_bench_"))
    make_reward_model(work / "rm")
    rows = []
    for variant in args.variants.split(","):
        r = subprocess.run([sys.executable, __file__, "--child", variant, "--iterations", str(args.iterations),
                            "--work", str(work)], capture_output=True, text=True)
        if r.returncode != 0:
            print(f"{variant}: failed\n{r.stderr[-2000:]}")
            continue
        rows.append(json.loads(r.stdout.strip().splitlines()[-1]))
    print(f"\nPPO iteration, SmolLM2-135M, batch 8 prompts x 32 new tokens, 4 epochs, 1 minibatch ({os.cpu_count()} CPUs)")
    print(f"{'variant':<12}{'s/iteration':>13}{'episodes/s':>12}{'peak RSS GB':>13}   phases (s)")
    for r in rows:
        phases = " ".join(f"{k[5:-2]} {v:.1f}" for k, v in r["phases"].items() if k != "time/iteration_s")
        print(f"{r['variant']:<12}{r['s_per_iteration']:>13.2f}{r['episodes_per_s']:>12.2f}{r['peak_rss_gb']:>13.2f}   {phases}")
    print(f"{'TRL 1.12':<12}{30.0:>13.2f}{8 / 30.0:>12.2f}{7.5:>13.2f}   (yardstick measured on the 2-core CPU, full fine-tuning)")


if __name__ == "__main__":
    main()
