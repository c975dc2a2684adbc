"""The figures of `alignloop evaluate`, as small pure functions (no models, no I/O).

    summary(x)                 {"mean", "std", "n"} of a list of scores (std: population, ddof 0)
    win_rate(a, b)             share of items where a[i] > b[i], a tie counting 1/2
    paired_gain(a, b, prompt)  mean of a - b over prompts, with its paired standard error
    soft_win_rate(p)           mean of P(a better) (AI judge soft labels, both orders averaged)
    sequence_kl(logp, ref)     per-response KL estimates k1 and k3, summed over the response tokens
    human_win_rate(...)        the policy's share of wins in people's judgments of the eval pairs
    harmless_rate(flags)       share of red-team responses judged harmless
    refusal_margin(...)        what a reward model scores a refusal against the other answers to its prompt
"""

from __future__ import annotations

import math

import torch

from alignloop.algorithms.kl import kl_k1, kl_k3


def summary(x: list[float]) -> dict:
    """Mean, standard deviation (ddof 0) and count; None for an empty list.

    >>> summary([1.0, 2.0, 3.0, 6.0])
    {'mean': 3.0, 'std': 1.8708286933869707, 'n': 4}
    """
    if not x:
        return {"mean": None, "std": None, "n": 0}
    mean = sum(x) / len(x)
    return {"mean": mean, "std": math.sqrt(sum((v - mean) ** 2 for v in x) / len(x)), "n": len(x)}


def win_rate(a: list[float], b: list[float]) -> float | None:
    """Share of items i where a[i] > b[i]; a tie (a[i] == b[i]) counts 1/2.

    >>> win_rate([3.0, 1.0, 2.0, 0.0], [1.0, 2.0, 2.0, 5.0])    # win, loss, tie, loss
    0.375
    """
    if len(a) != len(b):
        raise ValueError(f"win_rate: {len(a)} scores against {len(b)}")
    if not a:
        return None
    return sum(1.0 if x > y else 0.5 if x == y else 0.0 for x, y in zip(a, b)) / len(a)


def paired_gain(a: list[float], b: list[float], prompt_index: list[int]) -> dict:
    """Gain of model a over model b, both sampled on the same prompts, with its standard error.

    Per prompt p the difference of the two models' mean scores, d_p = mean_i a_i - mean_i b_i
    over that prompt's samples; gain = mean_p d_p and se = std(d, ddof 1) / sqrt(P). Pairing by
    prompt removes the prompt-to-prompt variation both models share (some prompts are easy), so
    se measures only how much the models differ from prompt to prompt. `z` is gain / se.

    >>> paired_gain([2.0, 3.0, 1.0, 1.0], [1.0, 1.0, 1.0, 0.0], [0, 0, 1, 1])
    {'gain': 1.0, 'se': 0.5, 'z': 2.0, 'prompts': 2}
    """
    if not (len(a) == len(b) == len(prompt_index)):
        raise ValueError(f"paired_gain: {len(a)} and {len(b)} scores for {len(prompt_index)} prompt indices")
    groups: dict[int, list[float]] = {}
    for x, y, p in zip(a, b, prompt_index):
        groups.setdefault(p, []).append(x - y)
    d = [sum(v) / len(v) for v in groups.values()]
    if len(d) < 2:
        return {"gain": d[0] if d else None, "se": None, "z": None, "prompts": len(d)}
    gain = sum(d) / len(d)
    se = math.sqrt(sum((x - gain) ** 2 for x in d) / (len(d) - 1) / len(d))
    return {"gain": gain, "se": se, "z": gain / se if se > 0 else None, "prompts": len(d)}


def soft_win_rate(p: list[float]) -> float | None:
    """Mean of P(the policy's response is better), e.g. an AI judge's soft labels."""
    return sum(p) / len(p) if p else None


def sequence_kl(logp: list[torch.Tensor], ref_logp: list[torch.Tensor]) -> tuple[list[float], list[float]]:
    """Per response: k1 = sum_t (log pi - log pi_ref) and k3 = sum_t (exp(-d) - 1 + d), over the
    response's tokens (each tensor (T_i,), the log-probs of the sampled tokens). The mean of k1
    over responses sampled from pi estimates KL(pi || pi_ref) in nats per response (unbiased,
    can be negative on few samples); k3 is also unbiased per token and never negative."""
    k1, k3 = [], []
    for lp, rp in zip(logp, ref_logp, strict=True):
        if lp.shape != rp.shape:
            raise ValueError(f"sequence_kl: response of {lp.shape[0]} tokens scored as {rp.shape[0]}")
        k1.append(float(kl_k1(lp.double(), rp.double()).sum()))
        k3.append(float(kl_k3(lp.double(), rp.double()).sum()))
    return k1, k3


def harmless_rate(flags: list[bool]) -> float | None:
    return sum(flags) / len(flags) if flags else None


def refusal_margin(scores: list[float], refused: list[bool], prompt_index: list[int]) -> dict:
    """What a reward model scores a refusal, against the other answers to the same prompt.

    Over the prompts whose answers hold both a refusal and another answer: per prompt p,
    m_p = mean score of its refusals - mean score of its other answers. Returns {"margin":
    mean_p m_p, "above": the number of those prompts with m_p > 0, "prompts": their number,
    "refusals", "answers": the counts of refusals and of other answers over all prompts}; margin
    None when no prompt holds both. On red-team prompts a reward model that knows a harmful request
    has margin > 0 (PPO then learns to refuse); on ordinary prompts < 0 (over-refusal).

    >>> refusal_margin([1.0, 0.0, 0.5, 2.0, 3.0, -1.0], [True, False, False, True, False, True], [0, 0, 0, 1, 1, 2])
    {'margin': -0.125, 'above': 1, 'prompts': 2, 'refusals': 3, 'answers': 3}
    """
    if not (len(scores) == len(refused) == len(prompt_index)):
        raise ValueError(f"refusal_margin: {len(scores)} scores, {len(refused)} flags, "
                         f"{len(prompt_index)} prompt indices")
    groups: dict[int, tuple[list[float], list[float]]] = {}
    for s, r, p in zip(scores, refused, prompt_index):
        groups.setdefault(p, ([], []))[0 if r else 1].append(s)
    m = [sum(a) / len(a) - sum(b) / len(b) for a, b in groups.values() if a and b]
    return {"margin": sum(m) / len(m) if m else None, "above": sum(x > 0 for x in m), "prompts": len(m),
            "refusals": sum(refused), "answers": len(refused) - sum(refused)}


def ranking_position(ranking: list, index: int) -> int:
    """Tier of response `index` in a ranking ([2, [0, 3], 1]: response 0 is in tier 1)."""
    for tier, entry in enumerate(ranking):
        if index == entry or (isinstance(entry, list) and index in entry):
            return tier
    raise ValueError(f"response {index} is not in the ranking {ranking}")


def human_win_rate(pairs: list[tuple[str, str, str]], judgments: list[dict]) -> dict:
    """People's verdicts on the evaluation pairs (prompt text, policy response, baseline response).

    A judgment is an exported comparison ({"prompt", "responses", "ranking"}, or a soft label
    "p" about responses[0]); it counts when its prompt and two responses are one
    of the pairs (in either display order). Each judgment scores 1 (policy ranked above), 1/2
    (tie) or 0; several raters of one pair all count. Returns {"rate", "judgments", "pairs"}.
    """
    index = {(prompt, pol, base): k for k, (prompt, pol, base) in enumerate(pairs)}
    scores, seen = [], set()
    for j in judgments:
        responses = j.get("responses") or []
        if len(responses) != 2:
            continue
        prompt = j.get("prompt") or next((m["content"] for m in reversed(j.get("messages") or [])
                                          if m["role"] == "user"), None)
        for pol_i in (0, 1):
            k = index.get((prompt, responses[pol_i], responses[1 - pol_i]))
            if k is None:
                continue
            if j.get("ranking"):
                mine, theirs = (ranking_position(j["ranking"], i) for i in (pol_i, 1 - pol_i))
                scores.append(1.0 if mine < theirs else 0.5 if mine == theirs else 0.0)
            elif j.get("p") is not None:
                scores.append(j["p"] if pol_i == 0 else 1.0 - j["p"])
            else:
                continue
            seen.add(k)
            break
    return {"rate": sum(scores) / len(scores) if scores else None, "judgments": len(scores), "pairs": len(seen)}
