"""Combined reward sources: the weighted sum, and each source's own scores under a unique name."""

import pytest

from alignloop.rewards import CombinedReward


def test_a_source_named_twice_keeps_its_own_scores():
    """Two sources with one name (the same rule twice): the total weighs each once, and both
    appear in the per-source scores (the second as NAME#2) instead of one overwriting the other."""
    combined = CombinedReward("2*rule:tests.rules:count_e,0.5*rule:tests.rules:count_e,-1*rule:tests.rules:word_count")
    responses = ["eee", "a b e"]
    total, per_source = combined.score_all(["p", "p"], responses)
    assert total == pytest.approx([2.5 * 3 - 1, 2.5 * 1 - 3])
    assert list(per_source) == ["rule:tests.rules:count_e", "rule:tests.rules:count_e#2", "rule:tests.rules:word_count"]
    assert per_source["rule:tests.rules:count_e#2"] == [3.0, 1.0]
