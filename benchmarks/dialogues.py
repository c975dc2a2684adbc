"""Multi-turn dialogue preference data of realistic length (200-400 tokens), made from the shipped
assets, deterministic in a seed: what the reward-model benchmark (reward_long.py) trains on.

Each dialogue is a conversation of shipped demonstrations (user prompt, assistant answer) that
ends with one more prompt; its turns are added until prompt + longest response, as the reward
model encodes them (the bundled tokenizer and chat template), reach a length drawn uniformly
in [200, 400] tokens. The candidate answers to the last prompt, best first:

    0  its own demonstration                       (right)
    1  that demonstration cut to its first half     (incomplete)
    2  the demonstration of another prompt of its category   (off-topic, same register)
    3  the demonstration of a prompt of another category     (off-topic)

K = 4: a ranking [0, 1, 2, 3]. K = 2: a pair, the right answer against one of 1-3 (drawn),
as chosen / rejected. Written as alignloop comparison records (`messages` + `responses` +
`ranking`); `trl_pairs` gives TRL's conversational pairs of the same records (a ranking as its
C(4, 2) = 6 pairs).

    .venv/bin/python benchmarks/dialogues.py --n 1800 --k 2 --out dialogues.jsonl
"""

from __future__ import annotations

import argparse
import itertools
import random
from pathlib import Path

LENGTH_RANGE = (200, 400)


def _demonstrations() -> list[dict]:
    from alignloop.assets import asset
    from alignloop.data.io import read_records
    from alignloop.data.records import Demonstration

    return [{"prompt": d.prompt, "response": d.response, "category": (d.meta or {}).get("category", "")}
            for d in read_records(asset("demonstrations.jsonl"), Demonstration) if d.prompt]


def _length(tokenizer, messages: list[dict], responses: list[str]) -> int:
    from alignloop.data.chat import encode_prompt, encode_response

    return len(encode_prompt(tokenizer, messages)) + max(len(encode_response(tokenizer, r)) for r in responses)


def _half(text: str) -> str:
    words = text.split(" ")
    return " ".join(words[: max(1, len(words) // 2)])


def dialogue(rng: random.Random, demos: list[dict], tokenizer, k: int) -> dict:
    """One comparison record (see the module docstring), its length in LENGTH_RANGE."""
    last = rng.randrange(len(demos))
    d = demos[last]
    same = [i for i, x in enumerate(demos) if x["category"] == d["category"] and i != last]
    other = [i for i, x in enumerate(demos) if x["category"] != d["category"]] or same
    answers = [d["response"], _half(d["response"]), demos[rng.choice(same or other)]["response"],
               demos[rng.choice(other)]["response"]]
    if k == 2:
        answers = [answers[0], answers[rng.randint(1, 3)]]
    target = rng.randint(*LENGTH_RANGE)
    history: list[dict] = []
    final = [{"role": "user", "content": d["prompt"]}]
    for _ in range(40):  # add earlier turns while they fit under the target (and under the range's top)
        turn = demos[rng.choice([i for i in range(len(demos)) if i != last])]
        longer = [{"role": "user", "content": turn["prompt"]}, {"role": "assistant", "content": turn["response"]}]
        n = _length(tokenizer, longer + history + final, answers)
        current = _length(tokenizer, history + final, answers)
        if current >= LENGTH_RANGE[0] and n > target:
            break
        if n <= LENGTH_RANGE[1]:
            history = longer + history
    messages = history + final
    if k == 4:
        return {"messages": messages, "responses": answers, "ranking": [0, 1, 2, 3], "source": "simulated"}
    return {"messages": messages, "chosen": answers[0], "rejected": answers[1], "source": "simulated"}


def dialogues(n: int, k: int, seed: int = 0, tokenizer=None) -> list[dict]:
    """`n` comparison records (K = `k`, 2 or 4), the same for the same seed."""
    from alignloop.models.loading import load_tokenizer

    if k not in (2, 4):
        raise ValueError(f"k must be 2 or 4, got {k}")
    tokenizer = tokenizer or load_tokenizer("smollm2-135m-instruct")
    rng, demos = random.Random(seed), _demonstrations()
    return [dialogue(rng, demos, tokenizer, k) for _ in range(n)]


def trl_pairs(records: list[dict]) -> list[dict]:
    """TRL's conversational preference rows ({prompt, chosen, rejected} as message lists) of
    the records: a pair as itself, a ranking as its C(K, 2) pairs."""
    rows = []
    for r in records:
        ranked = [r["chosen"], r["rejected"]] if "chosen" in r else [r["responses"][i] for i in r["ranking"]]
        for better, worse in itertools.combinations(ranked, 2):
            rows.append({"prompt": r["messages"], "chosen": [{"role": "assistant", "content": better}],
                         "rejected": [{"role": "assistant", "content": worse}]})
    return rows


def main() -> None:
    from alignloop.data.io import write_jsonl

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1800, help="comparison records")
    parser.add_argument("--k", type=int, choices=[2, 4], default=2, help="responses per record (2: pairs, 4: rankings)")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument("--out", type=Path, required=True, help="output .jsonl")
    args = parser.parse_args()
    rows = dialogues(args.n, args.k, args.seed)
    write_jsonl(args.out, rows)
    print(f"wrote {len(rows)} dialogues (K = {args.k}) to {args.out}")


if __name__ == "__main__":
    main()
