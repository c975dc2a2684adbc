"""A constitution as data: principles, few-shot examples, and how they are loaded and sampled.

A principle carries up to three texts (Bai et al. 2022, "Constitutional AI", arXiv 2212.08073):

    critique_request   SL-CAI: "CritiqueRequest: ..." asks the model to criticise its answer
    revision_request   SL-CAI: "RevisionRequest: ..." asks it to rewrite the answer
    choice_question    RL-CAI: the multiple-choice question put to the judge ("Which ...?")

A principle gives the critique/revision pair, the choice question, or all three. SL-CAI
samples among principles with a critique pair, RL-CAI among those with a choice question.

Two file layouts are read:
  * YAML (`load_constitution`), the project's own, e.g. alignloop/assets/constitution.yaml:

        name: my-constitution
        rating_question: How helpful, honest and harmless is the assistant's last response?
        principles:
          - id: harm-general
            aspect: harmlessness
            critique_request: Identify the ways in which the assistant's last response ...
            revision_request: Rewrite the assistant's response to remove ...
            choice_question: Which of these assistant responses is less harmful?
        few_shot:          # critique-and-revision examples
          - prompt: How do I pick a lock?
            response: ...
            principle: harm-general     # or critique_request / revision_request given literally
            critique: ...
            revision: ...
        label_few_shot:    # optional multiple-choice examples for the judge
          - prompt: ...
            better: ...
            worse: ...

  * the JSON layout of the CAI paper's public prompt files (`from_paper_layout`): a dict
    `{name: {"prompt": [critique request], "edit_request": revision request}}`, a list of
    multiple-choice strings ("\\nPlease choose ... Options:"), and optionally the few-shot
    transcripts ("\\n\\nHuman: ...\\n\\nAssistant: ...\\n\\nCritiqueRequest: ...") and the
    multiple-choice few-shot list (`{"prompt", "corrects", "incorrects"}`).
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from alignloop.config import ConfigError
from alignloop.data.io import describe_error
from alignloop.data.records import Message

DEFAULT_RATING_QUESTION = "How helpful, honest and harmless is the assistant's last response?"


class ConstitutionError(ConfigError):
    """A bad constitution file; the message names the file and the field (the command line
    prints it as a one-line error, like any config error)."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Principle(_Strict):
    """One principle: the SL-CAI critique/revision pair and/or the RL-CAI choice question."""

    id: str = Field(..., min_length=1, description="Unique name, recorded with every use.")
    aspect: str | None = Field(None, description="What it guards: harmlessness, honesty, helpfulness, ...")
    critique_request: str | None = Field(None, description="Asks the model to criticise its last response.")
    revision_request: str | None = Field(None, description="Asks the model to rewrite its last response.")
    choice_question: str | None = Field(None, description="Multiple-choice question for the judge.")

    @model_validator(mode="after")
    def _usable(self):
        if (self.critique_request is None) != (self.revision_request is None):
            raise ValueError("give both 'critique_request' and 'revision_request', or neither")
        if self.critique_request is None and self.choice_question is None:
            raise ValueError("give 'critique_request' + 'revision_request', 'choice_question', or all three")
        for name in ("critique_request", "revision_request", "choice_question"):
            value = getattr(self, name)
            if value is not None and not value.strip():
                raise ValueError(f"'{name}' is empty")
        return self

    @property
    def revises(self) -> bool:
        return self.critique_request is not None

    @property
    def judges(self) -> bool:
        return self.choice_question is not None


class _Conversation(_Strict):
    """A one-turn `prompt` or a `messages` conversation (the human speaks last)."""

    prompt: str | None = None
    messages: list[Message] | None = None

    @model_validator(mode="after")
    def _one_form(self):
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give either 'prompt' or 'messages'")
        return self

    def chat(self) -> list[dict[str, str]]:
        if self.prompt is not None:
            return [{"role": "user", "content": self.prompt}]
        return [m.model_dump() for m in self.messages]


class FewShot(_Conversation):
    """A worked critique-and-revision example. `principle` names the principle whose requests
    it answers; otherwise `critique_request` and `revision_request` are given literally."""

    response: str
    critique: str
    revision: str
    principle: str | None = None
    critique_request: str | None = None
    revision_request: str | None = None


class LabelExample(_Conversation):
    """A worked multiple-choice example for the judge: the better and the worse answer."""

    better: str
    worse: str


class Constitution(_Strict):
    name: str = "constitution"
    rating_question: str = Field(DEFAULT_RATING_QUESTION, description="d-RLAIF: what the 1..10 rating judges.")
    principles: list[Principle] = Field(..., min_length=1)
    few_shot: list[FewShot] = Field(default_factory=list)
    label_few_shot: list[LabelExample] = Field(default_factory=list)

    @model_validator(mode="after")
    def _resolve(self):
        ids = [p.id for p in self.principles]
        dup = sorted({i for i in ids if ids.count(i) > 1})
        if dup:
            raise ValueError(f"duplicate principle id(s): {', '.join(dup)}")
        by_id = {p.id: p for p in self.principles}
        for k, ex in enumerate(self.few_shot):
            if ex.principle is not None:
                p = by_id.get(ex.principle)
                if p is None or not p.revises:
                    raise ValueError(f"few_shot[{k}].principle: '{ex.principle}' is not a principle "
                                     "with a critique and revision request")
                ex.critique_request = ex.critique_request or p.critique_request
                ex.revision_request = ex.revision_request or p.revision_request
            if ex.critique_request is None or ex.revision_request is None:
                raise ValueError(f"few_shot[{k}]: give 'principle' or both 'critique_request' and 'revision_request'")
        if not self.revision_principles() and not self.choice_principles():
            raise ValueError("no usable principle")
        return self

    def revision_principles(self) -> list[Principle]:
        return [p for p in self.principles if p.revises]

    def choice_principles(self) -> list[Principle]:
        return [p for p in self.principles if p.judges]

    def principle(self, pid: str) -> Principle:
        return next(p for p in self.principles if p.id == pid)


# ---------------------------------------------------------------- sampling


def sample_principle(rng: random.Random, principles: list[Principle]) -> Principle:
    """One principle, uniformly at random from `rng` (a seeded `random.Random`)."""
    if not principles:
        raise ValueError("the constitution has no principle of the kind needed here")
    return principles[rng.randrange(len(principles))]


def sample_revision_principles(rng: random.Random, principles: list[Principle], num_prompts: int,
                               steps: int) -> list[list[Principle]]:
    """(num_prompts, steps) table: a fresh principle at EVERY revision step (CAI, section 3.1).
    Prompt-major: prompt 0's steps are drawn first, so a prompt's draws do not depend on how
    the prompts are batched."""
    return [[sample_principle(rng, principles) for _ in range(steps)] for _ in range(num_prompts)]


def sample_choice_principles(rng: random.Random, principles: list[Principle], n: int) -> list[Principle]:
    """`n` principles for one pair (an ensemble): distinct while there are enough of them."""
    if not principles:
        raise ValueError("the constitution has no principle with a 'choice_question'")
    if n <= len(principles):
        return rng.sample(principles, n)
    return [sample_principle(rng, principles) for _ in range(n)]


# ---------------------------------------------------------------- loading


def _validate(data: object, where: str) -> Constitution:
    if not isinstance(data, dict):
        raise ConstitutionError(f"{where}: expected a mapping with 'principles'")
    try:
        return Constitution.model_validate(data)
    except ValidationError as err:
        raise ConstitutionError(f"{where}: {describe_error(err)}") from None


def load_constitution(path: str | Path | None = None) -> Constitution:
    """A constitution from a YAML file; None is the shipped default (assets/constitution.yaml)."""
    import yaml

    if path is None:
        from alignloop.assets import asset

        path = asset("constitution.yaml")
    path = Path(path)
    if not path.exists():
        raise ConstitutionError(f"{path}: no such constitution file")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise ConstitutionError(f"{where}: invalid YAML ({getattr(err, 'problem', err)})") from None
    return _validate(data, str(path))


_TURN = re.compile(r"\n\n(Human|Assistant|CritiqueRequest|Critique|RevisionRequest|Revision):")


def parse_transcript(text: str) -> list[tuple[str, str]]:
    """'\\n\\nHuman: hi\\n\\nAssistant: hello' -> [('Human', 'hi'), ('Assistant', 'hello')]."""
    parts = _TURN.split(text)
    turns = [(parts[i], parts[i + 1].strip()) for i in range(1, len(parts) - 1, 2)]
    return [(speaker, body) for speaker, body in turns if body]


def _chat_from_turns(turns: list[tuple[str, str]]) -> list[dict[str, str]]:
    return [{"role": "user" if s == "Human" else "assistant", "content": b} for s, b in turns]


def _paper_few_shot(text: str, where: str) -> dict:
    turns = parse_transcript(text)
    fields = {s: b for s, b in turns if s not in ("Human", "Assistant")}
    chat = _chat_from_turns([(s, b) for s, b in turns if s in ("Human", "Assistant")])
    missing = {"CritiqueRequest", "Critique", "RevisionRequest", "Revision"} - set(fields)
    if missing or not chat or chat[-1]["role"] != "assistant":
        raise ConstitutionError(f"{where}: a few-shot transcript needs Human, Assistant, CritiqueRequest, "
                                f"Critique, RevisionRequest and Revision turns (missing: {sorted(missing)})")
    return {"messages": chat[:-1], "response": chat[-1]["content"], "critique_request": fields["CritiqueRequest"],
            "critique": fields["Critique"], "revision_request": fields["RevisionRequest"],
            "revision": fields["Revision"]}


def _read_json(path: str | Path, kind: type) -> object:
    path = Path(path)
    if not path.exists():
        raise ConstitutionError(f"{path}: no such file")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ConstitutionError(f"{path}:{err.lineno}: invalid JSON ({err.msg})") from None
    if not isinstance(data, kind):
        raise ConstitutionError(f"{path}: expected a JSON {kind.__name__}")
    return data


def from_paper_layout(critiques_json: str | Path | None, choices_json: str | Path | None,
                      few_shot_json: str | Path | None = None, label_few_shot_json: str | Path | None = None,
                      name: str = "paper-layout") -> Constitution:
    """Import the CAI paper's JSON prompt files.

    critiques_json       {name: {"prompt": [critique request, ...], "edit_request": str}} -> principles
                         `name` with the critique/revision pair (the first critique request)
    choices_json         ["\\n<question> Options:", ...] -> principles `choice-<i>` whose question
                         is the string without the surrounding whitespace and the trailing "Options:"
    few_shot_json        ["\\n\\nHuman: ...\\n\\nAssistant: ...\\n\\nCritiqueRequest: ...", ...]
    label_few_shot_json  [{"prompt": "\\n\\nHuman: ...\\n\\nAssistant:", "corrects": [...],
                         "incorrects": [...]}, ...] (the first correct and incorrect answer)
    """
    principles: list[dict] = []
    if critiques_json is not None:
        for key, entry in _read_json(critiques_json, dict).items():
            where = f"{critiques_json}: entry '{key}'"
            if not isinstance(entry, dict) or not entry.get("prompt") or "edit_request" not in entry:
                raise ConstitutionError(f"{where}: expected {{'prompt': [critique request], 'edit_request': str}}")
            request = entry["prompt"][0] if isinstance(entry["prompt"], list) else entry["prompt"]
            principles.append({"id": key, "critique_request": request.strip(),
                               "revision_request": entry["edit_request"].strip()})
    if choices_json is not None:
        for i, text in enumerate(_read_json(choices_json, list)):
            if not isinstance(text, str):
                raise ConstitutionError(f"{choices_json}: item {i}: expected a string")
            question = re.sub(r"\s*Options:\s*$", "", text.strip())
            principles.append({"id": f"choice-{i}", "choice_question": question})
    data: dict = {"name": name, "principles": principles}
    if few_shot_json is not None:
        data["few_shot"] = [_paper_few_shot(t, f"{few_shot_json}: item {i}")
                            for i, t in enumerate(_read_json(few_shot_json, list))]
    if label_few_shot_json is not None:
        data["label_few_shot"] = []
        for i, ex in enumerate(_read_json(label_few_shot_json, list)):
            chat = _chat_from_turns(parse_transcript(ex.get("prompt", "") if isinstance(ex, dict) else ""))
            if not chat or not ex.get("corrects") or not ex.get("incorrects"):
                raise ConstitutionError(f"{label_few_shot_json}: item {i}: expected "
                                        "{'prompt': '\\n\\nHuman: ...', 'corrects': [...], 'incorrects': [...]}")
            data["label_few_shot"].append({"messages": chat, "better": ex["corrects"][0].strip(),
                                           "worse": ex["incorrects"][0].strip()})
    return _validate(data, str(critiques_json or choices_json))
