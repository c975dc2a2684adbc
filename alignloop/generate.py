"""`alignloop generate`: K responses per prompt from a model, written as samples records.

The command around models/generation.py's `generate` (the one sampling function every stage
calls): read the prompts, load the model, sample, write the samples file and its config.
With --generation-url a server samples instead (serving/remote.py): only the tokenizer of
--model is loaded here, to template the prompts it is sent as token ids.
"""

from __future__ import annotations

from pathlib import Path

from alignloop.config import config_command, save_config
from alignloop.configs import GenerateConfig


def sample_records(model, tokenizer, records, sampling, model_name: str, show_progress: bool = True,
                   gens=None) -> list[dict]:
    """Samples records (prompt fields + responses + model + sampling + finished) for prompt records;
    `gens`: their `Generations` already sampled (through a server), else `model` samples them."""
    from alignloop.models.generation import generate

    if gens is None:
        gens = generate(model, tokenizer, [r.chat() for r in records], sampling, show_progress)
    out = []
    for p, rows in enumerate(gens.by_prompt(len(records))):
        record = records[p]
        out.append({
            "id": record.id or f"prompt-{p}",
            **record.prompt_fields(),
            "responses": [gens.texts[i] for i in rows],
            "finished": [gens.finished[i] for i in rows],
            "model": model_name,
            "sampling": sampling.record(),
            **({"meta": record.meta} if record.meta else {}),
        })
    return out


def run_generate(cfg: GenerateConfig) -> Path:
    from alignloop.data.io import read_sources, write_records
    from alignloop.data.records import PromptRecord
    from alignloop.models.generation import Sampling
    from alignloop.models.loading import load_causal_lm, load_tokenizer, pick_device

    records = read_sources(cfg.prompts, PromptRecord)[: cfg.limit]
    tokenizer = load_tokenizer(cfg.model)
    sampling = Sampling(num_samples=cfg.num_samples, temperature=cfg.temperature, top_p=cfg.top_p,
                        max_new_tokens=cfg.max_new_tokens, seed=cfg.seed, batch_size=cfg.batch_size)
    if cfg.generation_url:
        from alignloop.serving.remote import generate_with_server

        gens = generate_with_server(cfg, cfg.model, tokenizer, [r.chat() for r in records], sampling)
        rows = sample_records(None, tokenizer, records, sampling, cfg.model, gens=gens)
    else:
        model = load_causal_lm(cfg.model, cfg.dtype, pick_device(cfg.device))
        rows = sample_records(model, tokenizer, records, sampling, cfg.model)
    write_records(cfg.out, rows)
    save_config(cfg, Path(cfg.out).with_suffix(".config.yaml"))
    n = sum(len(r["responses"]) for r in rows)
    unfinished = sum(not f for r in rows for f in r["finished"])
    print(f"wrote {n} responses for {len(rows)} prompts to {cfg.out} ({unfinished} hit max_new_tokens)")
    return Path(cfg.out)


command = config_command(GenerateConfig, run_generate, "generate",
                         help="Sample K responses per prompt (batched, KV cache, seeded) into a samples file.")
