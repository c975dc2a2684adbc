"""The `alignloop` command: one subcommand per stage.

Each stage module builds its own click command from its config class (see config.py), so
`alignloop STAGE --help` lists every field of that config with its description. Heavy
imports (torch, transformers) happen inside the stage, so `alignloop --help` and the web app
start fast.
"""

from __future__ import annotations

import importlib
import sys

import click

from alignloop.config import ConfigError
from alignloop.data.io import DataError

# subcommand -> (module, attribute holding the click command), imported only when run.
COMMANDS: dict[str, tuple[str, str, str]] = {
    "generate": ("alignloop.generate", "command", "Sample K responses per prompt from a model."),
    "sft": ("alignloop.train.sft", "command", "Supervised fine-tuning on demonstrations (LoRA or full)."),
    "reward": ("alignloop.train.reward", "command", "Train a reward model from rankings, pairs and soft labels."),
    "dpo": ("alignloop.train.dpo", "command", "Direct preference optimisation (DPO, IPO, cDPO, robust) on comparisons."),
    "kto": ("alignloop.train.kto", "command", "KTO on binary feedback (thumbs up / down), or on comparisons."),
    "score": ("alignloop.score", "command", "Add reward-model scores to a samples file."),
    "ppo": ("alignloop.train.ppo", "command", "PPO against reward models / rules / judges with a KL penalty."),
    "cai": ("alignloop.cai.cli", "group",
            "Constitutional AI: critique-and-revise (SL-CAI) and AI preference labels (RL-CAI)."),
    "evaluate": ("alignloop.evaluate.evaluate", "command", "Policy vs baseline on held-out prompts: reward, KL, win rates, harmlessness."),
    "report": ("alignloop.evaluate.report", "command", "One self-contained HTML report of a run folder (plots of every stage)."),
    "quickstart": ("alignloop.quickstart", "command", "The whole loop on the bundled model: recipe quickstart.yaml (make demo)."),
    "run": ("alignloop.pipeline", "command", "Run a recipe: its stages in order, cached in a run folder, resumable."),
    "feedback": ("alignloop.feedback.cli", "group", "Human feedback campaigns: create, add-rater, status, export; simulate, plan."),
    "serve": ("alignloop.feedback.cli", "serve_command", "Run the human-feedback web app (rater and admin pages, JSON API)."),
    "serve-model": ("alignloop.serving.cli", "command",
                    "Serve a model with an OpenAI-compatible API (chat completions, streaming), batching requests."),
    "chat": ("alignloop.feedback.chat_cli", "group",
             "Chat page with thumbs, side-by-side arena and leaderboard (model servers by URL); export the votes."),
    "quality": ("alignloop.quality.cli", "group", "Feedback quality: agreement, calibration, bias, consensus labels."),
    "data": ("alignloop.data.cli", "group", "Data files in any format (TRL, HH-RLHF, ratings, datasets): inspect, convert."),
    "export": ("alignloop.export", "group", "Plain Hugging Face folders of a policy (causal LM) or a reward model."),
    "control": ("alignloop.control.cli", "command",
                "A Gymnasium control task learned from clip preferences (Christiano et al. 2017), stable-baselines3 agent."),
}

# commands that one package's group shows from another package, attached here (the top layer)
# so that neither package imports the other's command line
ATTACHED: dict[str, list[tuple[str, str]]] = {
    "feedback": [("alignloop.quality.cli", "simulate_command"), ("alignloop.quality.cli", "plan_command")],
}


class LazyGroup(click.Group):
    def list_commands(self, ctx):
        return sorted(COMMANDS)

    def get_command(self, ctx, name):
        if name not in COMMANDS:
            return None
        module, attr, _ = COMMANDS[name]
        command = getattr(importlib.import_module(module), attr)
        for module, attr in ATTACHED.get(name, []):
            command.add_command(getattr(importlib.import_module(module), attr))
        return command

    def format_commands(self, ctx, formatter):
        rows = [(name, COMMANDS[name][2]) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(package_name="alignloop")
def app():
    """alignloop: SFT, human and AI feedback, reward models, PPO and evaluation: the RLHF loop.

    Every command takes --config FILE.yaml (its options as YAML) plus command-line options,
    which override the file. Run `alignloop COMMAND --help` for a command's options.
    """


def close_distributed(finished: bool) -> None:
    """Tear the process group down before the interpreter exits: a gloo group left to the
    interpreter's shutdown can abort one rank ("terminate called without an active exception").
    Only a run that finished waits for the other ranks (a failed rank must not wait on them)."""
    if "torch.distributed" not in sys.modules:
        return
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        if finished:
            dist.barrier()
        dist.destroy_process_group()


def main(argv: list[str] | None = None) -> None:
    finished = False
    try:
        app.main(args=argv, standalone_mode=False, prog_name="alignloop")
        finished = True
    except (DataError, ConfigError, FileNotFoundError) as err:
        click.echo(f"error: {err}", err=True)
        sys.exit(2)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as err:
        err.show()
        sys.exit(err.exit_code)
    except click.exceptions.Exit as err:
        sys.exit(err.exit_code)
    finally:
        close_distributed(finished)


if __name__ == "__main__":
    main()
