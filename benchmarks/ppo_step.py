"""PPO iteration time and peak memory: alignloop against TRL's PPOTrainer, in one invocation.

Configuration (DESIGN.md section 5), the same for both trainers: the bundled SmolLM2-135M-Instruct,
batch 8 prompts (the shipped training prompts), up to 32 new tokens at temperature 0.7, 4 PPO
epochs, 1 minibatch, a reward model (the bundled backbone with an untrained scalar head: scoring
costs what a trained one costs) scoring every response, a value function, AdamW. Two settings:
full fine-tuning (alignloop: a frozen reference copy, the value head on the policy's trunk; TRL:
separate reference, reward and value models) and LoRA (r 16, alpha 32, every projection; the
reference is the policy with the adapter off in both; TRL's value model is a full model, trained
whole, as PPOTrainer has it). Each trainer and setting runs in its own process, so its peak RSS
is its own; the first iteration is warm-up and left out; the others give the mean and its
standard error. The phase split (sampling, scoring, forward = the no-grad log-probs / values /
reference, training = the PPO epochs, other = the rest of the iteration's wall time) is printed
beside the physical floor: the matmul FLOPs of the iteration's minimal work (`iteration_flops`)
over this machine's matmul rate in the precision used, measured here (`matmul_rate`).

On a CPU without fast bf16 kernels (no AVX-512) alignloop runs a bf16 request in float32 and TRL's
bf16 is ~60x slower, so the bf16 settings run only where the CPU (or a GPU) has fast bf16, unless
named with --settings.

TRL 1.12.0 is the last release with PPOTrainer (`trl.trainer.PPOTrainer` in 0.24 and 0.26,
`trl.experimental.ppo.PPOTrainer` from 0.26 to 1.12; gone from 1.13). It lives in its own
environment, made here on first use (or give --trl-python):

    python3 -m venv .venv-trl-ppo && .venv-trl-ppo/bin/pip install torch==2.13.0 && \\
        .venv-trl-ppo/bin/pip install trl==1.12.0 peft==0.21.2 && .venv-trl-ppo/bin/pip install --no-deps -e .

    .venv/bin/python benchmarks/ppo_step.py                       # full and LoRA (fp32 here), both trainers
    .venv/bin/python benchmarks/ppo_step.py --settings full-fp32 --iterations 4 --trainers alignloop
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

MODEL = "smollm2-135m-instruct"
BATCH, NEW_TOKENS, EPOCHS, MINIBATCHES, TEMPERATURE = 8, 32, 4, 1, 0.7
LR = {"full": 1e-5, "lora": 1e-4}
LORA = dict(r=16, alpha=32.0, targets=["q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj", "gate_proj"])
SETTINGS = ["full-fp32", "lora-fp32", "full-bf16", "lora-bf16"]  # (what is trained)-(precision)
TRAINERS = {"alignloop": "alignloop", "trl": "TRL 1.12"}
PHASES = ["generate", "score", "forward", "train"]  # alignloop's time/<phase>_s metrics
PHASE_TITLES = {"generate": "sampling", "score": "scoring", "forward": "forward", "train": "training"}
TRL_VERSION = "1.12.0"
TRL_ENV = Path(__file__).resolve().parent.parent / ".venv-trl-ppo"


# ---------------------------------------------------------------- the arithmetic (pure)


@dataclass
class ModelSize:
    """Weights of the policy that multiply activations: the decoder stack (`trunk`, embedding
    lookup excluded: it costs no FLOPs) and the LM head (`head`, V x H)."""

    trunk: int
    head: int


@dataclass
class IterationTokens:
    """Real (unpadded) tokens of one iteration over all its sequences: prompt + response
    (`total`) and response alone (`response`, EOS included where one was sampled)."""

    total: float
    response: float


def iteration_flops(size: ModelSize, tokens: IterationTokens, epochs: int, lora: bool) -> dict[str, float]:
    """Matmul FLOPs of one PPO iteration's minimal work, by phase (alignloop's phase names).

    A forward costs 2 x weights x tokens; a forward + backward 6 x weights x tokens when every
    weight is trained, 4 x with LoRA (activation gradients through the frozen base, none for
    its weights; the adapters' own FLOPs are left out). The LM head is needed only where a
    token is scored (response positions); attention scores are left out (short sequences).
    With T = total tokens, R = response tokens:

        generate = 2 (trunk T + head R)            prefill + one step per sampled token
        score    = 2 trunk T                       the reward model (a scalar head)
        forward  = 2 x 2 (trunk T + head R)        policy log-probs + values (head on its trunk), reference
        train    = epochs x k (trunk T + head R)   k = 6 (full) or 4 (LoRA)
    """
    per_pass = size.trunk * tokens.total + size.head * tokens.response
    return {"generate": 2 * per_pass, "score": 2 * size.trunk * tokens.total, "forward": 4 * per_pass,
            "train": epochs * (4 if lora else 6) * per_pass}


def mean_se(xs: list[float]) -> tuple[float, float]:
    """(mean, standard error of the mean) of repeated measurements; se is nan for one value."""
    m = sum(xs) / len(xs)
    return m, (statistics.stdev(xs) / math.sqrt(len(xs)) if len(xs) > 1 else float("nan"))


def ratio_se(a: float, se_a: float, b: float, se_b: float) -> tuple[float, float]:
    """a / b and its standard error to first order: r sqrt((se_a / a)^2 + (se_b / b)^2)."""
    r = a / b
    return r, r * math.sqrt((se_a / a) ** 2 + (se_b / b) ** 2)


# ---------------------------------------------------------------- measurements


def matmul_rate(dtype_name: str, seconds: float = 1.0) -> dict:
    """FLOP/s of a square matmul C = A @ B (2 n^3 FLOPs) in `dtype_name`, n sized so that one
    product takes about 0.2 s here (from a 256^3 probe), repeated for `seconds`; the median."""
    import torch

    dtype = getattr(torch, dtype_name)
    device = "cuda" if torch.cuda.is_available() else "cpu"

    def timed(n: int, reps: int) -> list[float]:
        a, b = torch.randn(n, n, device=device).to(dtype), torch.randn(n, n, device=device).to(dtype)
        a @ b  # warm-up
        out = []
        for _ in range(reps):
            if device == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            a @ b
            if device == "cuda":
                torch.cuda.synchronize()
            out.append(time.perf_counter() - t)
        return out

    probe = 2 * 256**3 / statistics.median(timed(256, 5))
    n = int(min(8192 if device == "cuda" else 4096, max(256, round((probe * 0.2 / 2) ** (1 / 3) / 64) * 64)))
    first = timed(n, 1)[0]
    times = [first] + timed(n, max(0, math.ceil((seconds - first) / first)))
    return {"dtype": dtype_name, "n": n, "flop_per_s": 2 * n**3 / statistics.median(times)}


def size_of(lm) -> ModelSize:
    """The `ModelSize` of a causal LM (its weights may be on the meta device: only shapes are read)."""
    from alignloop.models.forward import backbone_and_head

    backbone, head = backbone_and_head(lm)
    embed = backbone.get_input_embeddings().weight
    trunk = sum(p.numel() for p in backbone.parameters() if p is not embed)
    return ModelSize(trunk=trunk, head=head.weight.numel())


def model_size(model: str = MODEL) -> ModelSize:
    from alignloop.models.loading import load_causal_lm

    return size_of(load_causal_lm(model))


def make_reward_model(folder: Path, model: str = MODEL) -> None:
    """An (untrained) reward model on `model`'s backbone: scoring costs what a trained one costs."""
    from alignloop.models.loading import load_causal_lm, load_tokenizer
    from alignloop.models.reward_model import RewardNet, save_reward_model

    save_reward_model(RewardNet(load_causal_lm(model)), load_tokenizer(model), folder, base=model,
                      mean=[0.0], std=[1.0], max_length=256)


def fast_bf16() -> bool:
    """Whether bf16 runs at hardware speed here (a GPU with bf16, or a CPU whose oneDNN has bf16 kernels)."""
    import torch

    from alignloop.models.loading import cpu_has_fast_half

    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    return cpu_has_fast_half(torch.bfloat16)


def run_alignloop(setting: str, iterations: int, work: Path) -> dict:
    """alignloop's PPO: per steady iteration its wall time (end of one iteration's metrics to the
    next's), its phases (the `time/*_s` metrics) and its real tokens."""
    os.environ["ALIGNLOOP_NO_PROGRESS"] = "1"
    import alignloop.train.ppo as ppo
    from alignloop.assets import asset
    from alignloop.configs import PPOConfig
    from alignloop.train.tracking import read_metrics

    mode, precision = setting.split("-")
    tokens, ends = [], []
    collect, metrics_of = ppo.collect_rollout, ppo.iteration_metrics

    def counted(*args, **kwargs):
        rollout = collect(*args, **kwargs)
        tokens.append((rollout.inputs["attention_mask"].sum().item(), rollout.mask.sum().item()))
        return rollout

    def clocked(*args, **kwargs):
        out = metrics_of(*args, **kwargs)
        ends.append(time.time())
        return out

    ppo.collect_rollout, ppo.iteration_metrics = counted, clocked
    out = work / f"alignloop-{setting}"
    ppo.run_ppo(PPOConfig(model=MODEL, reward=str(work / "rm"), prompts=asset("prompts_train.jsonl"), out=out,
                          iterations=iterations, batch_size=BATCH, max_new_tokens=NEW_TOKENS, temperature=TEMPERATURE,
                          ppo_epochs=EPOCHS, minibatches=MINIBATCHES, micro_batch_size=BATCH, learning_rate=LR[mode],
                          lora=mode == "lora", lora_rank=LORA["r"], lora_alpha=LORA["alpha"],
                          lora_targets=LORA["targets"], mixed_precision="bf16" if precision == "bf16" else "no",
                          save_every=0, log_samples_every=0))
    steady = read_metrics(out)[1:]
    return {"iteration_s": [b - a for a, b in zip(ends[:-1], ends[1:])],
            "phases": {p: [x[f"time/{p}_s"] for x in steady] for p in PHASES},
            "tokens": [t for t, _ in tokens[1:]], "response_tokens": [r for _, r in tokens[1:]],
            "precision": "bf16" if precision == "bf16" and fast_bf16() else "fp32"}


def run_trl(setting: str, iterations: int, work: Path) -> dict:
    """TRL's PPOTrainer: per steady iteration its wall time (one `on_step_end` to the next), its
    phases (its module functions `batch_generation`, `get_reward` and `forward` clocked, the
    training phase from the first forward with gradients to the step's end) and its real tokens."""
    os.environ["TRL_EXPERIMENTAL_SILENCE"] = "1"
    import datasets
    import torch
    import trl.experimental.ppo.ppo_trainer as pt
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer, TrainerCallback
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    from alignloop.assets import asset
    from alignloop.models.registry import resolve_model

    mode, precision = setting.split("-")
    folder = resolve_model(MODEL)
    tok = AutoTokenizer.from_pretrained(folder, padding_side="left")
    # TRL reads padding as `ids == pad_token_id`; SmolLM2's pad is its EOS <|im_end|>, which also closes every
    # chat turn of the prompt, so TRL would mask those: pad with <|endoftext|> (in the vocabulary, unused) instead.
    tok.pad_token = "<|endoftext|>"
    prompts = [json.loads(line)["prompt"] for line in open(asset("prompts_train.jsonl"))]
    ds = datasets.Dataset.from_list([{"input_ids": tok.apply_chat_template([{"role": "user", "content": p}],
                                                                           add_generation_prompt=True, tokenize=True,
                                                                           return_dict=False)} for p in prompts])

    def scalar_model():
        m = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=1)
        m.config.pad_token_id = tok.pad_token_id
        return m

    policy = AutoModelForCausalLM.from_pretrained(folder)
    reference = AutoModelForCausalLM.from_pretrained(folder) if mode == "full" else None
    reward, value = scalar_model(), scalar_model()
    peft_config = None
    if mode == "lora":
        from peft import LoraConfig

        peft_config = LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"], target_modules=LORA["targets"],
                                 lora_dropout=0.0, task_type="CAUSAL_LM", bias="none")

    clock = {p: 0.0 for p in PHASES} | {"train_start": None}
    steps: list[dict] = []
    tokens: list[tuple[int, int]] = []

    def timed(fn, phase_of):
        def wrapper(*args, **kwargs):
            phase = phase_of(*args)
            t = time.time()
            if phase == "train":
                clock["train_start"] = clock["train_start"] or t
                return fn(*args, **kwargs)
            result = fn(*args, **kwargs)
            clock[phase] += time.time() - t
            if fn is batch_generation:
                count_tokens(args[1], result[0])
            return result
        return wrapper

    def count_tokens(queries, query_responses):
        """Real tokens: the prompt without its padding, the response up to its first EOS."""
        response = query_responses[:, queries.shape[1]:]
        eos = response == tok.eos_token_id
        first = torch.where(eos.any(1), eos.int().argmax(1) + 1, response.shape[1])  # (B,) tokens up to EOS
        tokens.append((int((queries != tok.pad_token_id).sum() + first.sum()), int(first.sum())))

    batch_generation = pt.batch_generation
    pt.batch_generation = timed(pt.batch_generation, lambda *a: "generate")
    pt.get_reward = timed(pt.get_reward, lambda model, *a: "score" if model is reward else "forward")
    pt.forward = timed(pt.forward, lambda *a: "train" if torch.is_grad_enabled() else "forward")

    class Clock(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            self.t = time.time()

        def on_step_end(self, args, state, control, **kw):
            now = time.time()
            steps.append({"iteration_s": now - self.t, "train": now - clock["train_start"],
                          **{p: clock[p] for p in PHASES if p != "train"}})
            clock.update({p: 0.0 for p in PHASES} | {"train_start": None})
            self.t = now

    # TRL's defaults except gradient checkpointing (alignloop does not use it) and the sample
    # generations it would print (num_sample_generations=0); the stop token is EOS as in alignloop.
    args = PPOConfig(output_dir=str(work / f"trl-{setting}"), per_device_train_batch_size=BATCH,
                     gradient_accumulation_steps=1, num_mini_batches=MINIBATCHES, num_ppo_epochs=EPOCHS,
                     local_rollout_forward_batch_size=BATCH, response_length=NEW_TOKENS, temperature=TEMPERATURE,
                     total_episodes=BATCH * iterations, learning_rate=LR[mode], stop_token="eos",
                     missing_eos_penalty=1.0, num_sample_generations=0, activation_checkpointing=False,
                     bf16=precision == "bf16", use_cpu=not torch.cuda.is_available(), report_to=[],
                     save_strategy="no", logging_steps=1, disable_tqdm=True, dataloader_num_workers=0, seed=0)
    PPOTrainer(args=args, processing_class=tok, model=policy, ref_model=reference, reward_model=reward,
               value_model=value, train_dataset=ds, eval_dataset=ds, peft_config=peft_config,
               callbacks=[Clock()]).train()
    steady = steps[1:]
    return {"iteration_s": [s["iteration_s"] for s in steady], "phases": {p: [s[p] for s in steady] for p in PHASES},
            "tokens": [t for t, _ in tokens[1:]], "response_tokens": [r for _, r in tokens[1:]],
            "precision": precision}


def child(kind: str, iterations: int, work: Path) -> None:
    trainer, setting = kind.split(":")
    from peers import report

    report((run_trl if trainer == "trl" else run_alignloop)(setting, iterations, work))


# ---------------------------------------------------------------- the table


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def print_table(results: dict, rates: dict, size: ModelSize, iterations: int) -> None:
    import torch

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"{cpu_name()}, {os.cpu_count()} CPUs"
    print(f"\nPPO iteration, SmolLM2-135M ({(size.trunk + size.head) / 1e6:.1f}M matmul weights: "
          f"{size.trunk / 1e6:.1f}M trunk + {size.head / 1e6:.1f}M LM head), batch {BATCH} prompts x {NEW_TOKENS} new "
          f"tokens, {EPOCHS} PPO epochs, {MINIBATCHES} minibatch, reward model + value function")
    print(f"{device}; torch {torch.__version__}; matmul rate: "
          + ", ".join(f"{r['dtype'].replace('bfloat16', 'bf16').replace('float32', 'fp32')} "
                      f"{r['flop_per_s'] / 1e9:.1f} GFLOP/s ({r['n']}^3)" for r in rates.values()))
    print(f"steady state: iterations 2-{iterations} of {iterations}, mean +- standard error; phases in s; "
          "floor = the iteration's minimal matmul FLOPs / the matmul rate in the precision used")
    head = (f"{'setting':<11}{'trainer':<11}{'prec':<6}{'s/iteration':>15}{'it/s':>8}{'RSS GB':>8}  "
            + "".join(f"{PHASE_TITLES[p]:>10}" for p in PHASES) + f"{'other':>8}{'tokens':>8}{'resp':>6}")
    print(head)
    for setting in dict.fromkeys(k.split(":")[1] for k in results):
        rows = {t: results[f"{t}:{setting}"] for t in TRAINERS if f"{t}:{setting}" in results}
        for trainer, r in rows.items():
            it, it_se = mean_se(r["iteration_s"])
            phases = {p: mean_se(r["phases"][p])[0] for p in PHASES}
            tokens = IterationTokens(mean_se(r["tokens"])[0], mean_se(r["response_tokens"])[0])
            print(f"{setting:<11}{TRAINERS[trainer]:<11}{r['precision']:<6}{f'{it:.2f} +- {it_se:.2f}':>15}"
                  f"{1 / it:>8.3f}{r['peak_rss_gb']:>8.2f}  " + "".join(f"{phases[p]:>10.2f}" for p in PHASES)
                  + f"{it - sum(phases.values()):>8.2f}{tokens.total:>8.0f}{tokens.response:>6.0f}")
            rate = rates["bfloat16" if r["precision"] == "bf16" else "float32"]["flop_per_s"]
            floor = {p: f / rate for p, f in iteration_flops(size, tokens, EPOCHS, setting.startswith("lora")).items()}
            print(f"{'':<11}{'  floor':<11}{r['precision']:<6}{sum(floor.values()):>15.2f}{'':>16}  "
                  + "".join(f"{floor[p]:>10.2f}" for p in PHASES))
        if len(rows) == 2:
            a, b = rows["alignloop"], rows["trl"]
            speed, speed_se = ratio_se(*mean_se(b["iteration_s"]), *mean_se(a["iteration_s"]))
            target = 3.0 if setting.startswith("lora") else 2.5
            rss = a["peak_rss_gb"] / b["peak_rss_gb"]
            print(f"{'':<11}alignloop / TRL: {speed:.2f}x +- {speed_se:.2f} iterations/s (target >= {target}x), "
                  f"{rss:.2f}x peak RSS" + ("" if setting.startswith("lora") else " (target <= 0.6x)"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--settings", default=None,
                        help="comma-separated, of " + ", ".join(SETTINGS) + " (default: the fp32 ones, and the bf16 "
                             "ones where bf16 is fast here)")
    parser.add_argument("--trainers", default=",".join(TRAINERS), help="comma-separated, of " + ", ".join(TRAINERS))
    parser.add_argument("--iterations", type=int, default=6, help="PPO iterations per run (the first is warm-up)")
    parser.add_argument("--trl-python", default=None,
                        help="python of the TRL environment (default: .venv-trl-ppo, made here on first use)")
    parser.add_argument("--json", type=Path, default=None, help="also write every measurement to this JSON file")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.iterations, Path(args.work))
        return
    if args.iterations < 3:
        parser.error("--iterations must be >= 3 (the first is warm-up; a standard error needs two more)")
    bf16 = fast_bf16()
    settings = args.settings.split(",") if args.settings else [s for s in SETTINGS if s.endswith("fp32") or bf16]
    if not args.settings and not bf16:
        print("bf16 settings left out: this machine has no fast bf16 kernels (alignloop would run them in float32, "
              "TRL ~60x slower); name them with --settings to run them anyway")
    trainers = args.trainers.split(",")
    for name, known in ((settings, SETTINGS), (trainers, TRAINERS)):
        if unknown := [x for x in name if x not in known]:
            parser.error(f"unknown {', '.join(unknown)} (known: {', '.join(known)})")
    from peers import peer_python, run_child

    pythons = {"alignloop": sys.executable}
    if "trl" in trainers:
        pythons["trl"] = peer_python(args.trl_python, TRL_ENV, [f"trl=={TRL_VERSION}", "peft==0.21.2"])
    rates = {d: matmul_rate(d) for d in ("float32", "bfloat16")}
    work = Path(tempfile.mkdtemp(prefix="ppo_bench_"))
    make_reward_model(work / "rm")
    size = model_size()
    results = {}
    for setting in settings:
        for trainer in trainers:
            kind, python = f"{trainer}:{setting}", pythons[trainer]
            if python is None:
                continue
            t = time.time()
            result = run_child(python, [__file__, "--child", kind, "--iterations", str(args.iterations),
                                        "--work", str(work)], kind)
            if result is None:
                continue
            results[kind] = result
            print(f"{kind}: done in {time.time() - t:.0f} s", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"rates": rates, "size": vars(size), "results": results}, indent=1))
    print_table(results, rates, size, args.iterations)


if __name__ == "__main__":
    main()
