"""Constitutions: the shipped default, YAML errors, the CAI paper's JSON layout, sampling."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import pytest

from alignloop.cai.constitution import (
    ConstitutionError,
    from_paper_layout,
    load_constitution,
    parse_transcript,
    sample_choice_principles,
    sample_revision_principles,
)
from alignloop.cai.prompts import critique_chat, label_chat, revision_chat

DATA = Path(__file__).parent / "data"


def paper_constitution():
    return from_paper_layout(DATA / "paper_critiques.json", DATA / "paper_choices.json",
                             DATA / "paper_few_shot.json", DATA / "paper_label_few_shot.json")


def test_default_constitution_covers_the_four_aspects():
    c = load_constitution()
    assert len(c.principles) >= 12
    assert all(p.revises and p.judges for p in c.principles)
    aspects = Counter(p.aspect for p in c.principles)
    assert set(aspects) == {"harmlessness", "honesty", "helpfulness", "non-evasiveness"}
    assert min(aspects.values()) >= 2
    # few-shot examples name principles; their request texts are filled in from them
    ex = c.few_shot[0]
    assert ex.critique_request == c.principle(ex.principle).critique_request
    assert len(c.label_few_shot) >= 2


@pytest.mark.parametrize("text, message", [
    ("principles:\n  - id: a\n    critique_request: x\n", "field 'principles.0': give both"),
    ("principles:\n  - id: a\n    choice_question: q\n  - id: a\n    choice_question: r\n", "duplicate principle id(s): a"),
    ("principles:\n  - id: a\n    choice_question: q\n    colour: red\n", "field 'principles.0.colour': unknown field"),
    ("principles:\n  - id: a\n    choice_question: q\nfew_shot:\n  - {prompt: p, response: r, critique: c, "
     "revision: v, principle: a}\n", "few_shot[0].principle: 'a' is not a principle with a critique"),
    ("principles: [\n", "invalid YAML"),
])
def test_bad_yaml_names_the_file_and_the_field(tmp_path, text, message):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConstitutionError) as err:
        load_constitution(path)
    assert str(err.value).startswith(str(path)) and message in str(err.value), str(err.value)


def test_paper_layout_import():
    c = paper_constitution()
    assert [p.id for p in c.revision_principles()] == ["rude", "wrong", "vague"]
    assert [p.choice_question for p in c.choice_principles()] == [
        "Which response is more polite?", "Which response is more accurate?", "Which response is more specific?"]
    ex = c.few_shot[0]
    assert [m.role for m in ex.messages] == ["user", "assistant", "user"]
    assert (ex.response, ex.revision) == ("Five, obviously.", "Two plus two is four.")
    assert parse_transcript("\n\nHuman: a b\n\nAssistant: c\n\nHuman:") == [("Human", "a b"), ("Assistant", "c")]


def test_paper_layout_errors_name_the_entry(tmp_path):
    bad = tmp_path / "crit.json"
    bad.write_text('{"harmful0": {"prompt": ["x"]}}')
    with pytest.raises(ConstitutionError, match="entry 'harmful0'"):
        from_paper_layout(bad, None)


def test_paper_layout_gives_the_same_prompts_as_the_yaml():
    yaml_c, paper_c = load_constitution(DATA / "small.yaml"), paper_constitution()
    chat = [{"role": "user", "content": "How do I make my essay better?"}]
    for seed in range(5):
        (py,), (pp,) = (sample_revision_principles(random.Random(seed), c.revision_principles(), 1, 1)[0]
                        for c in (yaml_c, paper_c))
        crit_y = critique_chat(chat, "Write more.", py, yaml_c.few_shot)
        crit_p = critique_chat(chat, "Write more.", pp, paper_c.few_shot)
        assert crit_y == crit_p
        assert revision_chat(crit_y, "Too short.", py) == revision_chat(crit_p, "Too short.", pp)
        qy, qp = (sample_choice_principles(random.Random(seed), c.choice_principles(), 1)[0].choice_question
                  for c in (yaml_c, paper_c))
        assert label_chat(chat, "a", "b", qy, yaml_c.label_few_shot) == label_chat(chat, "a", "b", qp,
                                                                                   paper_c.label_few_shot)


def test_a_principle_is_drawn_at_every_step_and_seeded():
    c = load_constitution()
    pool = c.revision_principles()
    table = sample_revision_principles(random.Random(7), pool, num_prompts=20, steps=4)
    assert table == sample_revision_principles(random.Random(7), pool, num_prompts=20, steps=4)
    assert table != sample_revision_principles(random.Random(8), pool, num_prompts=20, steps=4)
    # draws vary across the steps of one prompt (16 principles, 4 steps: repeats are rare)
    assert sum(len({p.id for p in row}) > 1 for row in table) == 20
    # prompt-major: the first prompts' draws do not depend on how many prompts follow
    assert sample_revision_principles(random.Random(7), pool, 3, 4) == table[:3]
    # draws spread over the pool (80 uniform draws from 16: seed 7 uses 15 of them)
    assert len({p.id for row in table for p in row}) >= 12


def test_ensemble_draws_distinct_principles():
    pool = load_constitution().choice_principles()
    picked = sample_choice_principles(random.Random(0), pool, 5)
    assert len({p.id for p in picked}) == 5
    assert len(sample_choice_principles(random.Random(0), pool[:2], 3)) == 3


def test_import_command_writes_a_yaml_that_loads_as_the_same_constitution(tmp_path):
    from click.testing import CliRunner

    from alignloop.cai.cli import group

    out = tmp_path / "paper.yaml"
    args = ["import", "--critiques", DATA / "paper_critiques.json", "--choices", DATA / "paper_choices.json",
            "--few-shot", DATA / "paper_few_shot.json", "--label-few-shot", DATA / "paper_label_few_shot.json",
            "--out", out]
    result = CliRunner().invoke(group, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0 and "3 critique/revision principles, 3 choice principles" in result.output
    assert load_constitution(out) == paper_constitution()
