"""Sharded runs (FSDP2 over gloo, 2 CPU processes) stopped and resumed, started ONCE per session.

`accelerate launch --config_file alignloop/configs/accelerate/fsdp.yaml --num_processes 2
tests/sharded_processes.py JOBS.json` runs, for each stage, the same config three times in
one pair of processes: stopped early (`stop`, its checkpoint sharded through Accelerate's
save_state), resumed from there to the end (`stop` again, --resume), and uninterrupted
(`whole`). The resume replays the same arithmetic, so its weights equal the uninterrupted
run's bit for bit (the issue 14 rule: same machine, same batching).

    sft     full fine-tuning, AdamW, 6 steps, stopped after 2
    reward  LoRA reward model, AdamW, 6 steps, stopped after 3; micro-batches cut into chunks of
            <= 130 tokens (as many per process: FSDP gathers the weights in each forward)
    dpo     DPO with LoRA (reference: adapter off), AdamW, 6 steps, stopped after 3
    ppo     full fine-tuning (a separate frozen reference), the sampling copy refreshed from the
            gathered shards each iteration, 3 iterations, stopped after 1
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

FSDP_CONFIG = Path(__file__).parent.parent / "alignloop" / "configs" / "accelerate" / "fsdp.yaml"
TRAIN = dict(epochs=1, batch_size=2, learning_rate=1e-3, warmup_ratio=0.0, eval_every=0, save_every=0, seed=0)
STAGES = {  # stage: (config values, the step / iteration the first run stops at)
    "sft": (dict(TRAIN, lora=False, heldout_fraction=0.0), 2),
    "reward": (dict(TRAIN, lora=True, max_length=48, training_token_budget=130), 3),  # 1-2 records a chunk: uneven
    "dpo": (dict(TRAIN, lora=True, max_length=48), 3),
    "ppo": (dict(reward="rule:tests.rules:count_e", iterations=3, batch_size=2, max_new_tokens=6, lora=False,
                  learning_rate=1e-3, missing_eos_penalty=1.0, save_every=0, log_samples_every=0, seed=0), 1),
}


def stage_config(stage: str, files: dict, out: Path, **update):
    from alignloop.configs import DPOConfig, PPOConfig, RewardConfig, SFTConfig

    values = {**STAGES[stage][0], "out": out, **update}
    if stage == "ppo":
        return PPOConfig(model=files["model"], prompts=files["prompts"], **values)
    if stage == "sft":
        return SFTConfig(model=files["model"], data=files["demos"], **values)
    cls = DPOConfig if stage == "dpo" else RewardConfig
    return cls(model=files["model"], data=files["comparisons"], **values)


def sampling_copy_gap(model: str) -> dict:
    """PPO's sampling copy built before FSDP shards the policy, refreshed from the gathered
    shards after an optimizer step: {"gap": the largest |copy - policy| over the weights (0
    when the refresh read the whole, current weights), "moved": the largest |copy - its
    initial weights| (the step reached it), "units": FSDP units, "layers": decoder layers} on rank 0 ({} on the others)."""
    import torch

    from alignloop.models.loading import load_causal_lm
    from alignloop.models.policy import PolicyWithValue, SamplingCopy
    from alignloop.train.common import make_accelerator, whole_state, whole_weights

    accelerator = make_accelerator("no")
    policy = PolicyWithValue(load_causal_lm(model, "float32", "cpu"))
    sampler = SamplingCopy(policy.lm, torch.float32)
    initial = {k: v.detach().clone() for k, v in sampler.model.named_parameters()}
    optimizer = torch.optim.SGD(policy.parameters(), lr=0.1)
    prepared, optimizer = accelerator.prepare(policy, optimizer)
    from torch.distributed.fsdp import FSDPModule

    units = sum(isinstance(m, FSDPModule) for m in prepared.modules())  # the root and one per decoder layer
    ids = (torch.arange(12).view(2, 6) + 3).to(accelerator.device)
    out = prepared(input_ids=ids, attention_mask=torch.ones_like(ids), response_mask=torch.ones(2, 3, device=ids.device),
                   prompt_width=3)
    accelerator.backward(-out["logprobs"].sum() + out["values"].square().sum())
    optimizer.step()
    with whole_weights(accelerator, prepared):
        copy = sampler.refresh()
    state = whole_state(accelerator, policy.lm)  # None where the weights are whole (ZeRO-2): its own state
    state = policy.lm.state_dict() if state is None else state
    if not accelerator.is_main_process:
        return {}
    params = {k: v.detach() for k, v in copy.named_parameters()}
    return {"units": units, "layers": policy.lm.config.num_hidden_layers,
            "gap": max((state[k].cpu() - params[k].cpu()).abs().max().item() for k in params),
            "moved": max((initial[k].cpu() - params[k].cpu()).abs().max().item() for k in params)}


def main(jobs_file: str) -> None:
    import torch.distributed as dist

    from alignloop.train.dpo import run_dpo
    from alignloop.train.ppo import run_ppo
    from alignloop.train.reward import run_reward
    from alignloop.train.sft import run_sft

    run = {"sft": run_sft, "reward": run_reward, "dpo": run_dpo, "ppo": run_ppo}
    spec = json.loads(Path(jobs_file).read_text())
    root, results = Path(spec["root"]), {}
    for stage in os.environ.get("ONLY_STAGES", ",".join(STAGES)).split(","):
        counter = "stop_at_iteration" if stage == "ppo" else "stop_at_step"
        stop = STAGES[stage][1]
        run[stage](stage_config(stage, spec["files"], root / stage / "stop", **{counter: stop}))
        checkpoint = root / stage / "stop" / "checkpoint"
        results[stage] = {"sharded": (checkpoint / "accelerate").is_dir(),
                          "files": sorted(p.name for p in checkpoint.iterdir())}
        run[stage](stage_config(stage, spec["files"], root / stage / "stop", resume=True))
        run[stage](stage_config(stage, spec["files"], root / stage / "whole"))
    results["sampling_copy"] = sampling_copy_gap(spec["files"]["model"])
    from alignloop.config import ConfigError

    try:
        run_ppo(stage_config("ppo", spec["files"], root / "no_copy", sampling_copy=False))
        results["no_sampling_copy"] = "ran"
    except ConfigError as err:
        results["no_sampling_copy"] = str(err)
    results["distributed_type"] = str(__import__("accelerate").state.PartialState().distributed_type)
    Path(f"{jobs_file}.rank{dist.get_rank()}").write_text(json.dumps(results))
    dist.barrier()
    dist.destroy_process_group()


def launch_command(config: Path, script_args: list[str]) -> list[str]:
    """`accelerate launch --config_file config --num_processes 2 ...` (CPU: gloo)."""
    launcher = os.path.join(os.path.dirname(sys.executable), "accelerate")
    if not os.path.exists(launcher):
        pytest.skip("accelerate launcher not found")
    return [launcher, "launch", "--config_file", str(config), "--num_processes", "2", *script_args]


LAUNCH_ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
REPO = Path(__file__).parent.parent


def launch(config: Path, script_args: list[str], timeout: int = 400) -> subprocess.CompletedProcess:
    """Run `launch_command` to the end."""
    return subprocess.run(launch_command(config, script_args), capture_output=True, text=True, timeout=timeout,
                          cwd=REPO, env=LAUNCH_ENV)


def sharded_jobs(config: Path, root: Path, model: str) -> dict:
    """Run every stage's three runs under launch `config` (2 processes) in `root`:
    {"root": root / stage / ("stop" | "whole"), "results": [rank 0's, rank 1's]}."""
    from tests.test_reward import synthetic_comparisons

    prompts, demos = root / "prompts.jsonl", root / "demos.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"Say something, number {i}."}) + "\n" for i in range(12)))
    demos.write_text("".join(json.dumps({"prompt": f"Count to {i}.", "response": " ".join(map(str, range(i % 7 + 1)))})
                             + "\n" for i in range(24)))
    files = {"model": model, "prompts": str(prompts), "demos": str(demos),
             "comparisons": str(synthetic_comparisons(root / "comparisons.jsonl", 24, 0))}
    jobs = root / "jobs.json"
    jobs.write_text(json.dumps({"root": str(root), "files": files}))
    r = launch(config, [__file__, str(jobs)])
    assert r.returncode == 0, r.stderr[-4000:]
    return {"root": root, "results": [json.loads(Path(f"{jobs}.rank{k}").read_text()) for k in range(2)]}


@pytest.fixture(scope="session")
def sharded_runs(tiny_model_dir, tmp_path_factory):
    """The FSDP2 runs on 2 CPU processes (`sharded_jobs`)."""
    return sharded_jobs(FSDP_CONFIG, tmp_path_factory.mktemp("sharded"), str(tiny_model_dir))


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent.parent))  # tests.rules, as `python -m` would find it
    main(sys.argv[1])
