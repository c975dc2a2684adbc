"""DPO training throughput (pairs/s, steady state) and peak memory: `alignloop dpo` against TRL's DPOTrainer.

Both train the bundled SmolLM2-135M-Instruct with bf16 autocast over fp32 weights (TRL's
default) on the same pairs: batch 8 pairs, each sequence about 128 tokens (a chat-templated
shipped prompt, a shipped demonstration as chosen and another as rejected), sigmoid loss, beta
0.1, AdamW. Two settings: LoRA (r 16, alpha 32, every projection; the reference is the policy
with the adapter off in both) and full fine-tuning (TRL: a second, frozen copy as reference,
its forward at every step; alignloop: the reference log-probs computed once in a first pass,
whose time is printed beside the steady state). Each trainer runs in its own process (so peak
RSS is its own); the first step is warm-up and left out.

TRL is not a dependency of alignloop: this script makes its environment on first use (or give
--trl-python), like benchmarks/reward_train.py:

    python3 -m venv .venv-trl && .venv-trl/bin/pip install torch==2.13.0 && \\
        .venv-trl/bin/pip install trl==1.16.0 gguf peft==0.21.2 && .venv-trl/bin/pip install --no-deps -e .

    .venv/bin/python benchmarks/dpo_train.py [--steps 8] [--only lora|full]
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
LR = {"lora": 1e-4, "full": 1e-6}
LORA = dict(r=16, alpha=32.0, targets=["q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj", "gate_proj"])
TRL_ENV = Path(__file__).resolve().parent.parent / ".venv-trl"


def make_pairs(path: Path, n: int) -> None:
    from alignloop.assets import asset
    from alignloop.data.io import read_records, write_jsonl
    from alignloop.data.records import Demonstration, PromptRecord

    prompts = read_records(asset("prompts_train.jsonl"), PromptRecord)
    demos = [d.response for d in read_records(asset("demonstrations.jsonl"), Demonstration)]
    rng = random.Random(0)
    write_jsonl(path, [{"prompt": prompts[i % len(prompts)].prompt, "chosen": rng.choice(demos),
                        "rejected": rng.choice(demos)} for i in range(n)])


def run_alignloop(data: Path, steps: int, out: Path, mode: str) -> dict:
    os.environ["ALIGNLOOP_NO_PROGRESS"] = "1"
    import alignloop.train.dpo as dpo
    from alignloop import metric_names as M
    from alignloop.configs import DPOConfig
    from alignloop.train.tracking import read_metrics

    timed = {}
    attach = dpo.attach_reference

    def clocked(*args, **kwargs):
        t0 = time.time()
        attach(*args, **kwargs)
        timed["reference_pass_s"] = time.time() - t0

    dpo.attach_reference = clocked
    dpo.run_dpo(DPOConfig(data=data, out=out, heldout_fraction=0.0, batch_size=BATCH, epochs=1, lora=mode == "lora",
                          lora_rank=LORA["r"], lora_alpha=LORA["alpha"], lora_targets=LORA["targets"],
                          learning_rate=LR[mode], beta=0.1, max_length=256, eval_every=0, save_every=0,
                          mixed_precision="bf16", stop_at_step=steps, group_by_prompt=False))
    m = [x for x in read_metrics(out) if M.STEP_S in x][1:]
    return {"pairs_per_s": BATCH * len(m) / sum(x[M.STEP_S] for x in m), **timed}


def run_trl(data: Path, steps: int, out: Path, mode: str) -> dict:
    import datasets
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    from alignloop.models.registry import resolve_model

    folder = resolve_model("smollm2-135m-instruct")
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder)
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

    peft_config = None
    if mode == "lora":
        from peft import LoraConfig

        peft_config = LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"], target_modules=LORA["targets"],
                                 lora_dropout=0.0, task_type="CAUSAL_LM", bias="none")
    # TRL's defaults (bf16 autocast, sigmoid loss) except gradient checkpointing, which alignloop does not use either.
    args = DPOConfig(output_dir=str(out), per_device_train_batch_size=BATCH, max_steps=steps, learning_rate=LR[mode],
                     beta=0.1, max_length=256, logging_steps=1, save_strategy="no", report_to=[], bf16=True,
                     gradient_checkpointing=False, use_cpu=not torch.cuda.is_available(), dataloader_num_workers=0,
                     disable_tqdm=True)
    DPOTrainer(model=model, args=args, train_dataset=ds, processing_class=tok, peft_config=peft_config,
               callbacks=[Clock()]).train()
    steady = times[1:]
    return {"pairs_per_s": BATCH * len(steady) / sum(steady)}


def child(kind: str, data: Path, steps: int, work: Path) -> None:
    trainer, mode = kind.split("-")
    run = run_trl if trainer == "trl" else run_alignloop
    from peers import report

    report(run(data, steps, work / kind, mode))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=8, help="optimizer steps per trainer (the first is warm-up)")
    parser.add_argument("--trl-python", default=None, help="python of the TRL environment (default: .venv-trl, made here)")
    parser.add_argument("--only", choices=["lora", "full"], help="one setting only")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, Path(args.data), args.steps, Path(args.work))
        return
    work = Path(tempfile.mkdtemp(prefix="dpo_bench_"))
    data = work / "pairs.jsonl"
    make_pairs(data, BATCH * (args.steps + 1))
    from peers import peer_python, run_child

    trl = peer_python(args.trl_python, TRL_ENV, ["trl==1.16.0", "gguf", "peft==0.21.2"])
    results = {}
    for mode in ("lora", "full"):
        if args.only and mode != args.only:
            continue
        for trainer, python in (("alignloop", sys.executable), ("trl", trl)):
            kind = f"{trainer}-{mode}"
            if python is None:
                continue
            result = run_child(python, [__file__, "--child", kind, "--data", str(data), "--steps", str(args.steps),
                                        "--work", str(work)], kind)
            if result is None:
                continue
            results[kind] = result
            print(f"{kind}: {results[kind]}", flush=True)
    print(f"\nDPO training, SmolLM2-135M, bf16 autocast, batch {BATCH} pairs (~128 tokens each), {os.cpu_count()} CPUs")
    print(f"{'trainer':<18}{'pairs/s':>10}{'peak RSS GB':>13}{'reference pass s':>18}")
    for kind, r in results.items():
        ref = f"{r['reference_pass_s']:.1f}" if "reference_pass_s" in r else "-"
        print(f"{kind:<18}{r['pairs_per_s']:>10.2f}{r['peak_rss_gb']:>13.2f}{ref:>18}")
    for mode in ("lora", "full"):
        a, t = results.get(f"alignloop-{mode}"), results.get(f"trl-{mode}")
        if a and t:
            print(f"{mode}: alignloop / TRL {a['pairs_per_s'] / t['pairs_per_s']:.2f}x pairs/s, "
                  f"peak RSS {a['peak_rss_gb']:.2f} vs {t['peak_rss_gb']:.2f} GB (target >= 1.5x at no more memory)")


if __name__ == "__main__":
    main()
