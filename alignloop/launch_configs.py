"""The Accelerate launch configs shipped with alignloop (alignloop/configs/accelerate/*.yaml).

    accelerate launch --config_file $(python -m alignloop.launch_configs fsdp) -m alignloop.cli sft ...

Each file's first line says when to use it; `--num_processes`, `--num_machines`,
`--machine_rank` and `--main_process_ip` on the command line override the file's values.
"""

from __future__ import annotations

import sys
from pathlib import Path

FOLDER = Path(__file__).parent / "configs" / "accelerate"
LAUNCH_CONFIGS = ("ddp", "fsdp", "deepspeed-zero2", "deepspeed-zero3")


def launch_config(name: str) -> Path:
    """The path of the shipped launch config `name` (one of LAUNCH_CONFIGS)."""
    if name not in LAUNCH_CONFIGS:
        raise ValueError(f"no launch config {name!r}; shipped: {', '.join(sorted(LAUNCH_CONFIGS))}")
    return FOLDER / f"{name}.yaml"


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(f"usage: python -m alignloop.launch_configs {{{'|'.join(LAUNCH_CONFIGS)}}}")
    try:
        print(launch_config(sys.argv[1]))
    except ValueError as err:
        sys.exit(str(err))
