"""`alignloop control`: the command, built from ControlConfig; gymnasium, stable-baselines3 and
torch are imported only when it runs (they are the `control` extra)."""

from __future__ import annotations

from alignloop.config import ConfigError, config_command
from alignloop.configs import ControlConfig

EXTRA = "pip install -c requirements.lock -e '.[control]'"


def run_control(cfg: ControlConfig):
    """The loop (control/loop.py), or a one-line error naming the extra when it is not installed."""
    try:
        from alignloop.control.loop import run_control as run_loop
    except ImportError as err:
        raise ConfigError(f"alignloop control needs gymnasium, stable-baselines3 and mujoco ({err.name} is "
                          f"missing): {EXTRA}") from None
    return run_loop(cfg)


command = config_command(
    ControlConfig, run_control, "control",
    help="Learn a Gymnasium control task from preferences between short clips of the agent's behaviour "
         "(Christiano et al. 2017): a stable-baselines3 agent on a learned reward ensemble, queries by ensemble "
         "disagreement, a synthetic labeller; --reward true is PPO on the true reward.")
