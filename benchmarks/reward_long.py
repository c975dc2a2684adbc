"""Reward-model training on multi-turn dialogues of 200-400 tokens: alignloop against TRL's
RewardTrainer, LoRA and full fine-tuning, K = 2 (pairs) and K = 4 (rankings), and the time of
alignloop's forward-only passes (held-out evaluation, normalisation) per sequence against a
training step per sequence.

The data is benchmarks/dialogues.py's (deterministic, from the shipped assets). Both trainers
train the bundled SmolLM2-135M-Instruct with AdamW on the same records, 4 records per optimizer
step (K = 4: TRL gets each ranking as its 6 pairs, 24 pairs a step in 6 accumulated micro-batches
of 4, while alignloop scores each record's 4 responses once), `--max-length` 768 so that no
dialogue is cut, LoRA r = 16 / alpha 32 on every projection (alignloop's defaults) or all weights.
Every trainer runs in its own process (its own peak RSS, ru_maxrss); the first step is warm-up.
alignloop then runs its held-out evaluation (`--heldout` records) and its normalisation pass
over the training responses, as `alignloop reward` does at the end; TRL has neither.

    train s/seq   a training step's seconds over the sequences it scores (records x K)
    eval s/seq    held-out evaluation seconds over its distinct responses
    norm s/seq    normalisation seconds over the responses it scores
    fwd x         train s/seq / the slower of eval and norm s/seq (target >= 3)

Precision: fp32 by default (`--mixed-precision no`; on a CPU without AVX-512 bf16 matmuls are
~60x slower, see README "Mixed precision"); `--mixed-precision bf16` runs both in bf16 autocast.

TRL is not a dependency of alignloop: it lives in a separate environment, made once with

    python3 -m venv .venv-trl && .venv-trl/bin/pip install torch==2.13.0 && \\
        .venv-trl/bin/pip install trl==1.16.0 gguf peft==0.21.2 && .venv-trl/bin/pip install --no-deps -e .

    .venv/bin/python benchmarks/reward_long.py [--steps 6] [--k 2 4] [--modes lora full]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from dialogues import dialogues, trl_pairs  # noqa: E402

BATCH = 4  # records per optimizer step
LORA = {"r": 16, "alpha": 32.0, "targets": ["q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj", "gate_proj"]}
LEARNING_RATE = {"lora": 2e-4, "full": 1e-5}


def run_alignloop(data: Path, heldout: Path, k: int, mode: str, steps: int, out: Path, max_length: int,
                  mixed_precision: str, training_token_budget: int | None = None) -> dict:
    os.environ["ALIGNLOOP_NO_PROGRESS"] = "1"
    from alignloop import metric_names as M
    from alignloop.train.reward import RewardConfig, run_reward
    from alignloop.train.tracking import read_metrics

    budget = {} if training_token_budget is None else {"training_token_budget": training_token_budget}
    t0 = time.time()
    run_reward(RewardConfig(**budget, data=data, heldout=heldout, out=out, batch_size=BATCH, epochs=1, lora=mode == "lora",
                            learning_rate=LEARNING_RATE[mode], max_length=max_length, eval_every=0, save_every=0,
                            mixed_precision=mixed_precision, lora_rank=LORA["r"], lora_alpha=LORA["alpha"]))
    total = time.time() - t0
    rows = read_metrics(out)
    step = [x for x in rows if M.STEP_S in x]
    assert len(step) == steps, f"{len(step)} steps, expected {steps}"
    steady = step[1:]
    step_s = sum(x[M.STEP_S] for x in steady) / len(steady)
    pairs_per_step = BATCH * k * (k - 1) // 2
    final = step[-1]
    norm = next(x for x in rows if M.NORMALIZATION_S in x)
    return {"pairs_per_s": pairs_per_step / step_s, "train_s_per_seq": step_s / (BATCH * k),
            "eval_s_per_seq": 1 / final[M.EVAL_SEQUENCES_PER_S], "eval_s": final[M.EVAL_S],
            "norm_s_per_seq": 1 / norm[M.NORMALIZATION_SEQUENCES_PER_S], "norm_s": norm[M.NORMALIZATION_S],
            "norm_sample": norm[M.NORMALIZATION_SAMPLE], "total_s": total}


def run_trl(data: Path, k: int, mode: str, steps: int, out: Path, max_length: int, mixed_precision: str) -> dict:
    import datasets
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, TrainerCallback
    from trl import RewardConfig, RewardTrainer

    from alignloop.models.registry import resolve_model

    folder = resolve_model("smollm2-135m-instruct")
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=1)
    model.config.pad_token_id = tok.pad_token_id
    rows = trl_pairs([json.loads(line) for line in open(data)])
    ds = datasets.Dataset.from_list(rows)
    ends: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            ends.append(time.time())

    accumulation = k * (k - 1) // 2  # K = 4: a record's 6 pairs, 4 records a step as alignloop
    peft_config = None
    if mode == "lora":
        from peft import LoraConfig

        peft_config = LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=0.0,
                                 target_modules=LORA["targets"], task_type="SEQ_CLS")
    args = RewardConfig(output_dir=str(out), per_device_train_batch_size=BATCH, gradient_accumulation_steps=accumulation,
                        max_steps=steps, learning_rate=LEARNING_RATE[mode], max_length=max_length, logging_steps=1,
                        save_strategy="no", report_to=[], bf16=mixed_precision == "bf16", gradient_checkpointing=False,
                        use_cpu=not torch.cuda.is_available(), dataloader_num_workers=0, disable_tqdm=True)
    t0 = time.time()
    RewardTrainer(model=model, args=args, train_dataset=ds, processing_class=tok, callbacks=[Clock()],
                  peft_config=peft_config).train()
    total = time.time() - t0
    step_s = (ends[-1] - ends[0]) / (len(ends) - 1)  # steps 2.. (the first is warm-up)
    pairs_per_step = BATCH * accumulation
    return {"pairs_per_s": pairs_per_step / step_s, "train_s_per_seq": step_s / (2 * pairs_per_step), "total_s": total}


def child(args) -> None:
    from peers import report

    trainer, mode, k = args.child.split(":")
    work, k = Path(args.work), int(k)
    data = work / f"train_k{k}.jsonl"
    if trainer == "trl":
        result = run_trl(data, k, mode, args.steps, work / f"trl_{mode}_{k}", args.max_length, args.mixed_precision)
    else:
        result = run_alignloop(data, work / f"heldout_k{k}.jsonl", k, mode, args.steps, work / f"al_{mode}_{k}",
                               args.max_length, args.mixed_precision, args.training_token_budget)
    report(result)


def cpu_name() -> str:
    try:
        return next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        return "unknown CPU"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=6, help="optimizer steps per trainer (the first is warm-up)")
    parser.add_argument("--k", type=int, nargs="+", choices=[2, 4], default=[2, 4], help="responses per record")
    parser.add_argument("--modes", nargs="+", choices=["lora", "full"], default=["lora", "full"], help="what trains")
    parser.add_argument("--trainers", nargs="+", choices=["alignloop", "trl"], default=["alignloop", "trl"])
    parser.add_argument("--heldout", type=int, default=64, help="held-out records alignloop evaluates at the end")
    parser.add_argument("--max-length", type=int, default=768, help="longest prompt + response (768: no dialogue is cut)")
    parser.add_argument("--mixed-precision", choices=["no", "bf16"], default="no", help="fp32 (no) or bf16 autocast")
    parser.add_argument("--training-token-budget", type=int, default=None,
                        help="alignloop's --training-token-budget (default: alignloop's default; 0: a micro-batch at once)")
    parser.add_argument("--trl-python", default=".venv-trl/bin/python", help="python of the TRL environment")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    from alignloop.data.io import write_jsonl
    from peers import run_child

    work = Path(tempfile.mkdtemp(prefix="rm_long_"))
    for k in args.k:
        write_jsonl(work / f"train_k{k}.jsonl", dialogues(BATCH * args.steps, k, seed=0))
        write_jsonl(work / f"heldout_k{k}.jsonl", dialogues(args.heldout, k, seed=1))
    results: dict[tuple, dict] = {}
    for k in args.k:
        for mode in args.modes:
            for trainer in args.trainers:
                python = sys.executable if trainer == "alignloop" else args.trl_python
                if not Path(python).exists():
                    print(f"{trainer}: {python} not found (see this script's docstring to make the TRL environment)")
                    continue
                result = run_child(python, [__file__, "--child", f"{trainer}:{mode}:{k}", "--work", str(work),
                                            "--steps", str(args.steps), "--max-length", str(args.max_length),
                                            "--mixed-precision", args.mixed_precision,
                                            *(["--training-token-budget", str(args.training_token_budget)]
                                              if args.training_token_budget is not None else [])],
                                  f"{trainer} {mode} K={k}")
                if result is None:
                    continue
                results[trainer, mode, k] = result
                print(f"{trainer} {mode} K={k}: {json.dumps(results[trainer, mode, k])}", flush=True)
    precision = "fp32" if args.mixed_precision == "no" else "bf16 autocast"
    budget = "default" if args.training_token_budget is None else args.training_token_budget
    print(f"\nreward model on dialogues of 200-400 tokens, SmolLM2-135M, {precision}, {BATCH} records a step, "
          f"{args.steps} steps, alignloop --training-token-budget {budget}, {cpu_name()}, {os.cpu_count()} CPUs, "
          f"{time.strftime('%Y-%m-%d')}")
    print(f"{'trainer':<11}{'mode':<6}{'K':>2}{'pairs/s':>9}{'vs TRL':>8}{'train s/seq':>13}{'eval s/seq':>12}"
          f"{'norm s/seq':>12}{'fwd x':>7}{'peak RSS GB':>13}")
    for (trainer, mode, k), r in results.items():
        peer = results.get(("trl", mode, k))
        ratio = f"{r['pairs_per_s'] / peer['pairs_per_s']:.2f}x" if peer and trainer == "alignloop" else ""
        fwd = ""
        evals = ["", ""]
        if "eval_s_per_seq" in r:
            evals = [f"{r['eval_s_per_seq']:.4f}", f"{r['norm_s_per_seq']:.4f}"]
            fwd = f"{r['train_s_per_seq'] / max(r['eval_s_per_seq'], r['norm_s_per_seq']):.1f}"
        print(f"{trainer:<11}{mode:<6}{k:>2}{r['pairs_per_s']:>9.2f}{ratio:>8}{r['train_s_per_seq']:>13.4f}"
              f"{evals[0]:>12}{evals[1]:>12}{fwd:>7}{r['peak_rss_gb']:>13.2f}")
    print("targets: training >= 1.5x TRL pairs/s; forward-only >= 3x faster per sequence than a training step; "
          "peak RSS <= 3 GB")


if __name__ == "__main__":
    main()
