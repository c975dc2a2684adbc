"""A run that waits for people: `Paused`, its exit status, and the message that says where raters
go. Raised by the recipe runner's human-feedback stage (alignloop/campaign.py) and by
`alignloop control --feedback human | mixed` (control/human.py); the command that catches it
prints the message and exits with EXIT_WAITING. Torch-free."""

from __future__ import annotations

from typing import Any

EXIT_WAITING = 3  # the command's exit status while it waits for a campaign


class Paused(Exception):
    """Human feedback is not complete: the message says where raters go and how to go on."""


def waiting_message(summary: dict[str, Any], db: str, command: str, media: str | None = None) -> str:
    """What a paused run prints: the campaign's progress (a `reports.campaign_summaries` row), how
    to add raters, serve the app and follow progress, and `command`, which goes on."""
    serve = f"alignloop serve --db {db}" + (f" --media {media}" if media else "") + " --host 0.0.0.0 --port 8000"
    return (f"waiting for {summary['expected'] - summary['judgments']} judgments: campaign {summary['name']!r} "
            f"({summary['items']} items, {summary['raters_per_item']} raters each; "
            f"{summary['complete_items']} items complete) in {db}\n"
            f"  add raters:   alignloop feedback add-rater NAME --db {db}   (prints a one-time login link)\n"
            f"  serve:        {serve}\n"
            f"  progress:     alignloop feedback status --db {db}\n"
            f"  then go on:   {command}   (continues once the campaign is complete)")
