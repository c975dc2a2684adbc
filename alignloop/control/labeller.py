"""The synthetic labeller: a simulated rater that compares two clips by their true return.

For clips a, b with true returns R_a, R_b (the environment's own reward, summed):
  1) with probability `noise` it answers at random: a or b, 1/2 each (the paper assumes 10%);
  2) else, when |R_a - R_b| <= `tolerance`, it says "equal" (a tie, trained toward p = 0.5);
  3) else it prefers a with the Bradley-Terry probability s((R_a - R_b) / temperature)
     (temperature 0: always the higher return).
Each answer is a comparison record like any other (data/records.py): `responses` are the two
clip ids, `ranking` [0, 1], [1, 0] or [[0, 1]], `source: simulated`, `meta.kind: clips` (the
ids' lengths are no response length), so quality's agreement, bias and consensus tools read
it unchanged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from alignloop.data.records import Comparison


def question(task: str) -> str:
    """The prompt of a clip comparison (the synthetic labeller's records and the people's campaign alike)."""
    return f"{task}: which clip does the task better?"


@dataclass(frozen=True)
class SyntheticLabeller:
    noise: float = 0.1
    temperature: float = 0.0
    tolerance: float = 0.0
    name: str = "oracle"

    def answer(self, return_a: float, return_b: float, rng: np.random.Generator) -> tuple[float, bool]:
        """(p, random): p = 1 (a better), 0 (b better) or 0.5 (equal); random: a random answer."""
        if rng.random() < self.noise:
            return float(rng.random() < 0.5), True
        diff = return_a - return_b
        if abs(diff) <= self.tolerance:
            return 0.5, False
        if self.temperature == 0:
            return float(diff > 0), False
        prob = 1.0 / (1.0 + math.exp(-max(min(diff / self.temperature, 50.0), -50.0)))
        return float(rng.random() < prob), False

    def label(self, task: str, id_a: str, id_b: str, return_a: float, return_b: float,
              rng: np.random.Generator, meta: dict | None = None) -> Comparison:
        """One comparison record of clips id_a (responses[0]) and id_b."""
        p, random_answer = self.answer(return_a, return_b, rng)
        ranking = [[0, 1]] if p == 0.5 else ([0, 1] if p == 1.0 else [1, 0])
        return Comparison(prompt=question(task), responses=[id_a, id_b],
                          ranking=ranking, rater=self.name, source="simulated",
                          meta={**(meta or {}), "kind": "clips", "true_returns": [float(return_a), float(return_b)],
                                "random_answer": random_answer})
