"""AI-labeler alignment with human labels, on the docstring's worked example and edge cases."""

from __future__ import annotations

import ast
import inspect

import pytest

from alignloop.quality import ai_alignment
from alignloop.quality.ai_alignment import ai_human_alignment
from alignloop.data.records import Comparison


def human(prompt, responses, ranking, **kw):
    return Comparison(prompt=prompt, responses=responses, ranking=ranking, source="human", **kw)


def ai(prompt, responses, p):
    return Comparison(prompt=prompt, responses=responses, p=p, source="ai")


def test_worked_example():
    people = [human("x", ["a", "b"], [0, 1]), human("x", ["b", "a"], [1, 0]), human("x", ["a", "b"], [1, 0]),
              human("y", ["c", "d"], [1, 0])]
    # pair {a, b}: votes a, a, b -> a; AI gives a 0.7 -> agree. Pair {c, d}: humans d, AI c (0.8) -> disagree
    out = ai_human_alignment([ai("x", ["a", "b"], 0.7), ai("y", ["c", "d"], 0.8)], people)
    assert (out["alignment"], out["agree"], out["disagree"], out["matched"]) == (0.5, 1, 1, 2)
    assert out["soft_alignment"] == pytest.approx((0.7 + 0.2) / 2)
    assert out["ci95"][0] <= 0.5 <= out["ci95"][1]


def test_matching_ignores_order_and_prompt_form():
    people = [Comparison(messages=[{"role": "user", "content": "x"}], responses=["b", "a"], ranking=[1, 0])]
    out = ai_human_alignment([ai("x", ["b", "a"], 0.2), ai("x", ["a", "z"], 0.9)], people)
    # the AI prefers a (p(b) = 0.2) as the human did; the pair {a, z} has no human label
    assert (out["agree"], out["ai_unmatched"], out["alignment"]) == (1, 1, 1.0)


def test_k_way_rankings_ties_and_unlabeled():
    people = [human("q", ["a", "b", "c"], [2, [0, 1]]),  # c > a, c > b, a ~ b (no vote)
              human("r", ["e", "f"], [0, 1]), human("r", ["e", "f"], [1, 0])]  # 1 : 1, no majority
    out = ai_human_alignment([ai("q", ["c", "a"], 0.9), ai("q", ["b", "c"], 0.5), ai("q", ["a", "b"], 0.6),
                              ai("r", ["e", "f"], 0.9)], people)
    # {a, b} was tied by the only ranking and {e, f} split 1 : 1: both are human ties
    assert (out["agree"], out["ai_ties"], out["human_ties"], out["matched"], out["ai_unmatched"]) == (1, 1, 2, 4, 0)
    assert ai_human_alignment([ai("q", ["a", "b"], 0.6)], [])["alignment"] is None


def test_module_does_not_import_torch():
    tree = ast.parse(inspect.getsource(ai_alignment))
    names = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))
             for a in n.names} | {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert "torch" not in names


def test_a_synthetic_labeller_is_compared_with_people_only():
    from alignloop.quality.report import ai_alignment_section

    people = [human("x", ["a", "b"], [0, 1])]
    top_up = Comparison(prompt="y", responses=["c", "d"], ranking=[1, 0], source="simulated", rater="oracle")
    synthetic = [Comparison(prompt="x", responses=["a", "b"], ranking=[1, 0], source="simulated", rater="oracle"),
                 Comparison(prompt="y", responses=["c", "d"], ranking=[1, 0], source="simulated", rater="oracle")]
    # the loop's own top-up label of {c, d} is no person's: only {a, b} is matched, and there they disagree
    s = ai_alignment_section(synthetic, people + [top_up], n_boot=0)
    assert s["synthetic"] and (s["matched"], s["agree"], s["disagree"], s["ai_unmatched"]) == (1, 0, 1, 1)
    # an AI judge is compared with a simulated panel too, as before
    judged = ai_alignment_section([ai("y", ["c", "d"], 0.2)], people + [top_up], n_boot=0)
    assert not judged["synthetic"] and (judged["matched"], judged["agree"]) == (1, 1)
