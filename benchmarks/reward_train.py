"""Reward-model training throughput (pairs/s) and peak memory: alignloop against TRL's RewardTrainer.

Both train the bundled SmolLM2-135M-Instruct (full fine-tuning, AdamW, bf16 autocast over
fp32 weights, which is TRL's default) on the same pairs: batch 8 pairs, each sequence about
128 tokens (a chat-templated shipped prompt and a shipped demonstration as response). Each
trainer runs in its own process (so peak RSS is its own); the first step is warm-up.

TRL is not a dependency of alignloop: it lives in a separate environment, made once with

    python3 -m venv .venv-trl && .venv-trl/bin/pip install torch==2.13.0 && \\
        .venv-trl/bin/pip install trl==1.16.0 gguf && .venv-trl/bin/pip install --no-deps -e .

    .venv/bin/python benchmarks/reward_train.py [--steps 8] [--trl-python .venv-trl/bin/python]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

BATCH = 8


def make_pairs(path: Path, n: int) -> None:
    from alignloop.data.io import read_records, write_jsonl
    from alignloop.data.records import Demonstration, PromptRecord
    from alignloop.assets import asset

    prompts = read_records(asset("prompts_train.jsonl"), PromptRecord)
    demos = [d.response for d in read_records(asset("demonstrations.jsonl"), Demonstration)]
    rng = random.Random(0)
    write_jsonl(path, [{"prompt": prompts[i % len(prompts)].prompt, "chosen": rng.choice(demos),
                        "rejected": rng.choice(demos)} for i in range(n)])


def run_alignloop(data: Path, steps: int, out: Path, mixed_precision: str) -> dict:
    os.environ["ALIGNLOOP_NO_PROGRESS"] = "1"
    from alignloop import metric_names as M
    from alignloop.train.reward import RewardConfig, run_reward
    from alignloop.train.tracking import read_metrics

    run_reward(RewardConfig(data=data, out=out, heldout_fraction=0.0, batch_size=BATCH, epochs=1, lora=False,
                            learning_rate=1e-5, max_length=256, eval_every=0, save_every=0,
                            mixed_precision=mixed_precision, stop_at_step=steps))
    m = [x for x in read_metrics(out) if M.STEP_S in x][1:]
    return {"pairs_per_s": BATCH * len(m) / sum(x[M.STEP_S] for x in m)}


def run_trl(data: Path, steps: int, out: Path) -> dict:
    import datasets
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, TrainerCallback
    from trl import RewardConfig, RewardTrainer

    from alignloop.models.registry import resolve_model

    folder = resolve_model("smollm2-135m-instruct")
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=1)
    model.config.pad_token_id = tok.pad_token_id
    rows = [json.loads(line) for line in open(data)]
    ds = datasets.Dataset.from_list([{"prompt": [{"role": "user", "content": r["prompt"]}],
                                      "chosen": [{"role": "assistant", "content": r["chosen"]}],
                                      "rejected": [{"role": "assistant", "content": r["rejected"]}]} for r in rows])
    times: list[float] = []

    class Clock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            self.t = time.time()

        def on_step_end(self, args, state, control, **kw):
            times.append(time.time() - self.t)

    import torch

    # TRL's defaults (bf16 autocast) except gradient checkpointing, which alignloop does not use either.
    args = RewardConfig(output_dir=str(out), per_device_train_batch_size=BATCH, max_steps=steps, learning_rate=1e-5,
                        max_length=256, logging_steps=1, save_strategy="no", report_to=[], bf16=True,
                        gradient_checkpointing=False, use_cpu=not torch.cuda.is_available(),
                        dataloader_num_workers=0, disable_tqdm=True)
    RewardTrainer(model=model, args=args, train_dataset=ds, processing_class=tok, callbacks=[Clock()]).train()
    steady = times[1:]
    return {"pairs_per_s": BATCH * len(steady) / sum(steady)}


def child(kind: str, data: Path, steps: int, work: Path) -> None:
    from peers import report

    if kind == "trl":
        result = run_trl(data, steps, work / "trl")
    else:
        result = run_alignloop(data, steps, work / kind, "bf16" if kind.endswith("bf16") else "no")
    from peers import report

    report(result)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=8, help="optimizer steps per trainer (the first is warm-up)")
    parser.add_argument("--trl-python", default=".venv-trl/bin/python", help="python of the TRL environment")
    parser.add_argument("--only", choices=["alignloop-bf16", "trl"], help="run one trainer only")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, Path(args.data), args.steps, Path(args.work))
        return
    work = Path(tempfile.mkdtemp(prefix="rm_bench_"))
    data = work / "pairs.jsonl"
    make_pairs(data, BATCH * (args.steps + 1))
    results = {}
    for kind, python in (("alignloop-bf16", sys.executable), ("trl", args.trl_python)):
        if args.only and kind != args.only:
            continue
        if not Path(python).exists():
            print(f"{kind}: {python} not found (see this script's docstring to make the TRL environment)")
            continue
        result = run_child(python, [__file__, "--child", kind, "--data", str(data), "--steps", str(args.steps),
                                    "--work", str(work)], kind)
        if result is None:
            continue
        results[kind] = result
    print(f"\nreward-model training, SmolLM2-135M full fine-tuning, bf16 autocast, batch {BATCH} pairs (~128 tokens each), "
          f"{os.cpu_count()} CPUs")
    print(f"{'trainer':<16}{'pairs/s':>10}{'peak RSS GB':>13}")
    for kind, r in results.items():
        print(f"{kind:<16}{r['pairs_per_s']:>10.2f}{r['peak_rss_gb']:>13.2f}")
    if "trl" in results and "alignloop-bf16" in results:
        print(f"ratio alignloop / TRL: {results['alignloop-bf16']['pairs_per_s'] / results['trl']['pairs_per_s']:.2f}x "
              "(target >= 1.3x)")


if __name__ == "__main__":
    main()
