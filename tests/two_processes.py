"""The two-process runs of the PPO and reward tests, started ONCE for the whole session.

Starting two processes costs about 10 s of imports, so every job runs in one launch:
`accelerate launch --num_processes 2 tests/two_processes.py JOBS.json`. Each process runs
the jobs in order and writes JOBS.json.rank<r>: per job, "ok" or the error it stopped with.

    ppo      PPO with plain SGD (weights differ from one process's by lr x rounding only)
    ppo_nan  PPO whose loss is NaN on rank 1 only, in iteration 2: both ranks must stop
    reward   one reward-model SGD step, and a held-out evaluation at step 0, on uneven halves
    dpo      one DPO SGD step (LoRA, the reference with the adapter off), the same held-out evaluations
    kto      one KTO SGD step on the comparisons converted (z0 summed over both processes), the same

The one-process runs to compare with are the same configs with batch_size x 2 (`one_process`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

PPO = dict(reward="rule:tests.rules:count_e", iterations=2, batch_size=4, max_new_tokens=8, lora=False,
           optimizer="sgd", learning_rate=0.05, top_p=1e-6, missing_eos_penalty=1.0, save_every=0,
           log_samples_every=0, seed=0)
JOBS = {
    "ppo": ("ppo", PPO, None),
    # iterations of one step each (one epoch, one minibatch): the 2nd policy_loss call is iteration 2's
    "ppo_nan": ("ppo", {**PPO, "iterations": 3, "ppo_epochs": 1}, {"call": 2, "rank": 1}),
    "reward": ("reward", dict(epochs=1, batch_size=4, lora=True, optimizer="sgd", learning_rate=0.5, warmup_ratio=0.0,
                              stop_at_step=1, eval_every=1, save_every=0, seed=0, max_length=48), None),
    "dpo": ("dpo", dict(epochs=1, batch_size=4, lora=True, optimizer="sgd", learning_rate=0.5, warmup_ratio=0.0,
                        stop_at_step=1, eval_every=1, save_every=0, seed=0, max_length=48, keep_checkpoint=True), None),
    "kto": ("kto", dict(epochs=1, batch_size=4, lora=True, optimizer="sgd", learning_rate=0.5, warmup_ratio=0.0,
                        stop_at_step=1, eval_every=1, save_every=0, seed=0, max_length=48), None),
}


def nan_on_call(policy_loss, call: int):
    """`policy_loss`, but its `call`-th call (1-based) returns a NaN loss (still attached to the graph)."""
    calls = [0]

    def patched(*args, **kwargs):
        loss, stats = policy_loss(*args, **kwargs)
        calls[0] += 1
        return (loss * float("nan"), stats) if calls[0] == call else (loss, stats)

    return patched


def job_config(name: str, files: dict, out: Path, processes: int = 2):
    """The config of job `name`; with processes=1, the one-process run it must equal (batch x 2)."""
    from alignloop.configs import DPOConfig, KTOConfig, PPOConfig, RewardConfig

    stage, values, _ = JOBS[name]
    values = {**values, "batch_size": values["batch_size"] * (2 // processes), "out": out}
    if stage == "ppo":
        return PPOConfig(model=files["model"], prompts=files["prompts"], **values)
    if stage in ("dpo", "kto"):
        cls = DPOConfig if stage == "dpo" else KTOConfig
        return cls(model=files["model"], data=files["comparisons"], heldout=files["heldout"], **values)
    return RewardConfig(model=files["model"], data=files["comparisons"], heldout=files["heldout"], **values)


def main(jobs_file: str) -> None:
    import torch.distributed as dist

    spec = json.loads(Path(jobs_file).read_text())
    rank = int(os.environ["RANK"])  # torchrun's; the process group itself is the runs' own (Accelerate, on CPU)
    results = {}
    for name in os.environ.get("ONLY_JOBS", ",".join(JOBS)).split(","):
        stage, _, nan = JOBS[name]
        cfg = job_config(name, spec["files"], Path(spec["root"]) / name)
        if stage == "ppo":
            from alignloop.train import ppo

            original = ppo.policy_loss
            if nan and rank == nan["rank"]:
                ppo.policy_loss = nan_on_call(original, nan["call"])
            try:
                ppo.run_ppo(cfg)
                results[name] = "ok"
            except FloatingPointError as err:
                results[name] = str(err)
            finally:
                ppo.policy_loss = original
        elif stage in ("dpo", "kto"):
            from alignloop.train.dpo import run_dpo
            from alignloop.train.kto import run_kto

            (run_dpo if stage == "dpo" else run_kto)(cfg)
            results[name] = "ok"
        else:
            from alignloop.train.reward import run_reward

            run_reward(cfg)
            results[name] = "ok"
    Path(f"{jobs_file}.rank{rank}").write_text(json.dumps(results))
    dist.barrier()
    dist.destroy_process_group()


@pytest.fixture(scope="session")
def two_process_runs(tiny_model_dir, tmp_path_factory):
    """{"root": the jobs' output folders (root / job name), "files": their inputs,
    "results": [rank 0's, rank 1's] {job: "ok" or the error}}."""
    from tests.test_reward import synthetic_comparisons

    launcher = os.path.join(os.path.dirname(sys.executable), "accelerate")
    if not os.path.exists(launcher):
        pytest.skip("accelerate launcher not found")
    root = tmp_path_factory.mktemp("two_processes")
    prompts = root / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"Say something, number {i}."}) + "\n" for i in range(32)))
    files = {"model": str(tiny_model_dir), "prompts": str(prompts),
             "comparisons": str(synthetic_comparisons(root / "comparisons.jsonl", 24, 0)),
             "heldout": str(synthetic_comparisons(root / "heldout.jsonl", 13, 1))}  # 7 and 6 records per rank
    jobs = root / "jobs.json"
    jobs.write_text(json.dumps({"root": str(root), "files": files}))
    # On CPU, --multi_gpu makes Accelerate start the processes with torchrun; they talk over gloo.
    r = subprocess.run([launcher, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                        "--mixed_precision", "no", "--dynamo_backend", "no", __file__, str(jobs)],
                       capture_output=True, text=True, timeout=300, cwd=Path(__file__).parent.parent,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    results = [json.loads(Path(f"{jobs}.rank{k}").read_text()) for k in range(2)]
    return {"root": root, "files": files, "results": results}


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent.parent))  # tests.rules, as `python -m` would find it
    main(sys.argv[1])
