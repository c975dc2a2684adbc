"""SL-CAI: critique and revise (Bai et al. 2022, "Constitutional AI", section 3).

For every prompt:
  1) response_0 = the model's answer;
  2) for step s = 1..n: principle_s is sampled at random (a fresh draw at EVERY step),
     critique_s = the model's critique of response_{s-1} under principle_s (few-shot examples
     first, so it does not confuse critique and revision), revision_s = its rewrite; the
     revision is the response of the next step.
All prompts go through step s together: one `generate` call for the critiques of step s,
one for the revisions. Chat layouts: alignloop/cai/prompts.py.

A revision that is empty once a leading "Revision:" label is stripped is degenerate: the step
keeps the previous response (`fallback: true`) and is counted; it makes no demonstration.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field

from alignloop.cai.constitution import Constitution, sample_revision_principles
from alignloop.cai.prompts import critique_chat, revision_chat
from alignloop.models.generation import Sampling, generate

_LABEL = re.compile(r"^\s*(revision|revised response|critique)\s*:\s*", re.IGNORECASE)


def clean(text: str) -> str:
    """The generated text without surrounding space and an echoed 'Revision:' / 'Critique:' label."""
    return _LABEL.sub("", text.strip()).strip()


@dataclass
class Step:
    principle_id: str
    critique: str
    revision: str
    fallback: bool  # the revision was degenerate; `revision` is the previous response

    def record(self, step: int) -> dict:
        return {"step": step, "principle_id": self.principle_id, "critique": self.critique,
                "revision": self.revision, "fallback": self.fallback}


@dataclass
class Trajectory:
    """One prompt's response and every critique-revision step."""

    initial_response: str
    steps: list[Step] = field(default_factory=list)

    @property
    def final(self) -> str:
        return self.steps[-1].revision if self.steps else self.initial_response


def sampling_for(base: Sampling, seed: int, stage: int) -> Sampling:
    """A distinct, reproducible sampling seed per generate call (stage 0: responses, 2s-1 and
    2s: critiques and revisions of step s)."""
    return Sampling(num_samples=1, temperature=base.temperature, top_p=base.top_p,
                    max_new_tokens=base.max_new_tokens, seed=seed * 1009 + stage, batch_size=base.batch_size)


def critique_and_revise(model, tokenizer, chats: list[list[dict]], constitution: Constitution, revisions: int,
                        sampling: Sampling, seed: int, few_shot: int = 2,
                        show_progress: bool = True) -> list[Trajectory]:
    """SL-CAI on chat prompts: one Trajectory per prompt, `revisions` steps each."""
    rng = random.Random(seed)
    table = sample_revision_principles(rng, constitution.revision_principles(), len(chats), revisions)
    examples = constitution.few_shot[:few_shot]
    gens = generate(model, tokenizer, chats, sampling_for(sampling, seed, 0), show_progress)
    trajectories = [Trajectory(initial_response=clean(t)) for t in gens.texts]
    for s in range(revisions):
        current = [t.final for t in trajectories]
        asks = [critique_chat(chat, current[i], table[i][s], examples) for i, chat in enumerate(chats)]
        critiques = [clean(t) for t in
                     generate(model, tokenizer, asks, sampling_for(sampling, seed, 2 * s + 1), show_progress).texts]
        asks = [revision_chat(asks[i], critiques[i], table[i][s]) for i in range(len(chats))]
        revised = [clean(t) for t in
                   generate(model, tokenizer, asks, sampling_for(sampling, seed, 2 * s + 2), show_progress).texts]
        for i, traj in enumerate(trajectories):
            fallback = not revised[i]
            traj.steps.append(Step(table[i][s].id, critiques[i], current[i] if fallback else revised[i], fallback))
    return trajectories


def trajectory_record(record, traj: Trajectory, index: int) -> dict:
    """The --out record of one prompt: prompt fields, initial response, every step, final."""
    return {"id": record.id or f"prompt-{index}", **record.prompt_fields(),
            "initial_response": traj.initial_response,
            "steps": [st.record(k + 1) for k, st in enumerate(traj.steps)],
            "final": traj.final, **({"meta": record.meta} if record.meta else {})}


def demonstrations(record, traj: Trajectory, index: int) -> list[dict]:
    """The revision of EVERY non-degenerate step as a demonstration (CAI fine-tunes on all)."""
    rid = record.id or f"prompt-{index}"
    return [{"id": f"{rid}:rev{k + 1}", **record.prompt_fields(), "response": st.revision,
             "meta": {"kind": "revision", "step": k + 1, "principle_id": st.principle_id, "source_id": rid}}
            for k, st in enumerate(traj.steps) if not st.fallback and st.revision]


def comparison(record, traj: Trajectory, index: int, rater: str) -> dict | None:
    """Final revision preferred over the initial response; None when they are the same text
    or either is empty (nothing to compare)."""
    if traj.final == traj.initial_response or not traj.final or not traj.initial_response:
        return None
    rid = record.id or f"prompt-{index}"
    return {"id": f"{rid}:cai", **record.prompt_fields(), "responses": [traj.final, traj.initial_response],
            "ranking": [0, 1], "source": "ai", "rater": rater,
            "meta": {"kind": "revision_vs_original", "principles": [st.principle_id for st in traj.steps],
                     "source_id": rid}}


def helpful_demonstrations(model, tokenizer, records, samples: int, sampling: Sampling, seed: int,
                           show_progress: bool = True) -> list[dict]:
    """`samples` responses per helpfulness prompt, as demonstrations (mixed into the SFT set)."""
    base = sampling_for(sampling, seed, 10_000)
    base.num_samples = samples
    gens = generate(model, tokenizer, [r.chat() for r in records], base, show_progress)
    out = []
    for p, rows in enumerate(gens.by_prompt(len(records))):
        rid = records[p].id or f"helpful-{p}"
        for k, i in enumerate(rows):
            text = gens.texts[i].strip()
            if text:
                out.append({"id": f"{rid}:s{k}", **records[p].prompt_fields(), "response": text,
                            "meta": {"kind": "helpful", "sample": k, "source_id": rid}})
    return out
