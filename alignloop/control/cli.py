"""`alignloop control`: the command, built from ControlConfig; gymnasium, stable-baselines3 and
torch are imported only when it runs (they are the `control` extra). A run that waits for people
(`--feedback human | mixed`) prints where raters go and exits with status 3 (as `alignloop run`
does when it pauses for human feedback); the same command again goes on."""

from __future__ import annotations

import sys

import click

from alignloop.config import ConfigError, config_command
from alignloop.configs import ControlConfig
from alignloop.feedback.waiting import EXIT_WAITING, Paused

EXTRA = "pip install -c requirements.lock -e '.[control]'"


def run_control(cfg: ControlConfig):
    """The loop (control/loop.py), or a one-line error naming the extra when it is not installed.
    Raises `Paused` while it waits for people (the recipe runner catches it)."""
    try:
        from alignloop.control.loop import run_control as run_loop
    except ImportError as err:
        raise ConfigError(f"alignloop control needs gymnasium, stable-baselines3 and mujoco ({err.name} is "
                          f"missing): {EXTRA}") from None
    return run_loop(cfg)


def run_command(cfg: ControlConfig):
    """`alignloop control`: the loop; while it waits for people, their message and exit status 3."""
    try:
        return run_control(cfg)
    except Paused as err:
        click.echo(f"paused for people's labels: {err}")
        sys.exit(EXIT_WAITING)


command = config_command(
    ControlConfig, run_command, "control",
    help="Learn a Gymnasium control task from preferences between short clips of the agent's behaviour "
         "(Christiano et al. 2017): a stable-baselines3 agent on a learned reward ensemble, queries by ensemble "
         "disagreement, a synthetic labeller or people (--feedback human | mixed: each round's queries become a "
         "clips campaign of the feedback app; the command exits with status 3 while it waits and goes on when run "
         "again); --reward true is PPO on the true reward.")
