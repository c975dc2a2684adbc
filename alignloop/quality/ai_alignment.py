"""AI-labeler alignment (RLAIF, Lee et al. 2023, section 3.3): how often the AI's preferred
response is the one people preferred, on the pairs both labeled. No torch here.

Records are matched by (the prompt as chat messages, the UNORDERED pair of response texts),
so {"prompt": "x"} and {"messages": [{"role": "user", "content": "x"}]} are the same prompt
and the order the responses were shown in does not matter. A human record with K > 2
responses votes on every pair it ranks apart; a tied pair is labeled but gets no vote.

Worked example: human votes on pair {a, b}: a, a, b (majority a); the AI gives p = 0.7 to
responses [a, b] (prefers a): agree. On pair {c, d} the humans prefer d, the AI prefers c:
disagree. alignment = 1 / 2 = 0.5; soft_alignment = mean AI probability of the human choice.
"""

from __future__ import annotations

import random
from collections import defaultdict

from alignloop.data.records import Comparison


def _pair_key(record: Comparison, a: str, b: str) -> tuple[str, frozenset[str]]:
    return record.chat_key(), frozenset((a, b))


def human_votes(human: list[Comparison]) -> dict[tuple[str, frozenset[str]], dict[str, float]]:
    """(prompt, pair) -> {response text: votes (rater weight)} from every human ranking."""
    votes: dict = defaultdict(lambda: defaultdict(float))
    for rec in human:
        tier = {i: t for t, group in enumerate(rec.tiers()) for i in group}
        for i in range(len(rec.responses)):
            for j in range(i + 1, len(rec.responses)):
                a, b = rec.responses[i], rec.responses[j]
                if a == b:
                    continue
                key = _pair_key(rec, a, b)
                if tier[i] == tier[j]:
                    votes[key][a] += 0.0  # a tie: labeled, but no vote for either
                    continue
                votes[key][a if tier[i] < tier[j] else b] += rec.weight
    return votes


def _ai_prob(record: Comparison) -> float:
    """P(responses[0] better) from the soft label, else from the ranking (1, 0 or 0.5 for a tie)."""
    if record.p is not None:
        return record.p
    tiers = record.tiers()
    return 0.5 if len(tiers) == 1 else (1.0 if 0 in tiers[0] else 0.0)


def _bootstrap_ci(outcomes: list[int], rounds: int, seed: int) -> list[float] | None:
    if not outcomes or rounds < 1:
        return None
    rng = random.Random(seed)
    n = len(outcomes)
    means = sorted(sum(outcomes[rng.randrange(n)] for _ in range(n)) / n for _ in range(rounds))
    return [means[int(0.025 * (rounds - 1))], means[int(0.975 * (rounds - 1))]]


def ai_human_alignment(ai: list[Comparison], human: list[Comparison], bootstrap: int = 1000,
                       seed: int = 0) -> dict:
    """Share of jointly labeled pairs where the AI's preference (p > 0.5) matches the human
    majority, with counts and a 95% bootstrap interval over pairs (None when bootstrap = 0).

    Keys: alignment, ci95, soft_alignment (mean AI probability of the human majority's
    choice), matched, agree, disagree, ai_ties (p = 0.5), human_ties (no majority),
    ai_unmatched (AI pairs no person labeled), ai_not_pairs (AI records with K != 2).
    """
    votes = human_votes(human)
    outcomes: list[int] = []
    soft: list[float] = []
    counts = {"matched": 0, "ai_ties": 0, "human_ties": 0, "ai_unmatched": 0, "ai_not_pairs": 0}
    for rec in ai:
        if len(rec.responses) != 2:
            counts["ai_not_pairs"] += 1
            continue
        a, b = rec.responses
        key = _pair_key(rec, a, b)
        if key not in votes:
            counts["ai_unmatched"] += 1
            continue
        counts["matched"] += 1
        va, vb = votes[key].get(a, 0.0), votes[key].get(b, 0.0)
        p = _ai_prob(rec)
        if va == vb:
            counts["human_ties"] += 1
            continue
        p_human_choice = p if va > vb else 1.0 - p
        if p == 0.5:
            counts["ai_ties"] += 1
            continue
        outcomes.append(int(p_human_choice > 0.5))
        soft.append(p_human_choice)
    n = len(outcomes)
    return {
        "alignment": sum(outcomes) / n if n else None,
        "ci95": _bootstrap_ci(outcomes, bootstrap, seed),
        "soft_alignment": sum(soft) / n if n else None,
        "agree": sum(outcomes), "disagree": n - sum(outcomes), **counts,
    }
