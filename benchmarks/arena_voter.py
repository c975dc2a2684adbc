"""A scripted arena voter: plays the people of `alignloop chat`'s arena to measure the online
loop end to end (issue 21) when nobody is there to vote.

    alignloop feedback add-rater voter --db runs/chat/feedback.db --api-token   # prints the token
    .venv/bin/python benchmarks/arena_voter.py --url http://127.0.0.1:8000 --token TOKEN --battles 24 --seed 1

Each battle: a new arena conversation through the JSON API (Bearer token), one of the shipped
training prompts (drawn with --seed) as the user's message, both streamed answers read to the
end, and a vote for the answer with the higher gold score (`alignloop.quality.gold
.helpful_harmless`, the quickstart's hidden yardstick); within --tie of each other it votes tie.
It prints one line per battle (outcome, the two models revealed after the vote, both gold scores)
and, at the end, each model's wins, losses and ties.
"""

from __future__ import annotations

import argparse
import json
import random
from collections import Counter

import httpx

from alignloop.assets import asset
from alignloop.quality.gold import helpful_harmless


def battle(client: httpx.Client, prompt: str) -> tuple[int, dict[int, str]]:
    """Ask one arena question; returns the battle id and each side's (0 left, 1 right) answer."""
    conv = client.post("/api/chat/conversations", json={"mode": "arena"})
    conv.raise_for_status()
    texts: dict[int, str] = {0: "", 1: ""}
    battle_id = None
    with client.stream("POST", f"/api/chat/conversations/{conv.json()['id']}/messages",
                       json={"content": prompt, "turn": 0}) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            event = json.loads(line)
            if event["event"] == "turn":
                battle_id = event["battle"]
            elif event["event"] == "delta":
                texts[event["side"]] += event["text"]
            elif event["event"] == "error":
                raise SystemExit(f"the arena answered an error: {event['message']}")
    return battle_id, texts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", default="http://127.0.0.1:8000", help="The chat app (alignloop chat --port).")
    ap.add_argument("--token", required=True, help="A rater's API token (feedback add-rater --api-token).")
    ap.add_argument("--battles", type=int, default=24, help="Battles to vote on.")
    ap.add_argument("--seed", type=int, default=0, help="Seed of the prompts' draw.")
    ap.add_argument("--tie", type=float, default=0.1, help="Gold scores closer than this are a tie.")
    args = ap.parse_args()
    prompts = [json.loads(line)["prompt"] for line in open(asset("prompts_train.jsonl"), encoding="utf-8")]
    rng = random.Random(args.seed)
    tally: dict[str, Counter] = {}
    with httpx.Client(base_url=args.url, headers={"Authorization": f"Bearer {args.token}"}, timeout=600) as client:
        for i in range(args.battles):
            prompt = rng.choice(prompts)
            battle_id, texts = battle(client, prompt)
            gold = [helpful_harmless(prompt, texts[0]), helpful_harmless(prompt, texts[1])]
            outcome = "tie" if abs(gold[0] - gold[1]) < args.tie else ("a" if gold[0] > gold[1] else "b")
            vote = client.post(f"/api/chat/battles/{battle_id}/vote", json={"outcome": outcome})
            vote.raise_for_status()
            models = vote.json()["models"]
            for side, name in enumerate(models):
                won = {"a": 0, "b": 1}.get(outcome)
                tally.setdefault(name, Counter())["tie" if won is None else "win" if won == side else "loss"] += 1
            print(f"{i} {outcome} {models} gold {gold[0]:.2f} {gold[1]:.2f}", flush=True)
    for name, c in sorted(tally.items()):
        print(f"{name}: {c['win']} wins, {c['loss']} losses, {c['tie']} ties")


if __name__ == "__main__":
    main()
