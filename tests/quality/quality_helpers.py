"""Hand-made judgment records for the quality tests."""

from alignloop.data.records import BinaryFeedback, Comparison


def pair(item: str, rater: str, winner: int, first: int = 0, gold: int | None = None, k_texts=("a", "bb")) -> Comparison:
    """A K = 2 judgment of `item` by `rater`: `winner` (0 / 1, or None for a tie) first."""
    ranking = [[0, 1]] if winner is None else [winner, 1 - winner]
    meta = {"item_id": item, "display_order": [first, 1 - first], "campaign": "c1"}
    if gold is not None:
        meta.update(is_gold=True, gold_ranking=[gold, 1 - gold])
    return Comparison(prompt=f"prompt {item}", responses=list(k_texts), ranking=ranking, rater=rater,
                      source="human", meta=meta)


def thumbs(item: str, rater: str, label: int) -> BinaryFeedback:
    return BinaryFeedback(prompt=f"prompt {item}", response="r", label=label, rater=rater, source="human",
                          meta={"item_id": item})
