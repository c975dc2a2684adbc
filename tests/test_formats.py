"""The ecosystem's data formats in, TRL's out: recognition, conversion, errors, Hugging Face
inputs, `alignloop data inspect / convert`, reward training on each preference format."""

import json
from pathlib import Path

import pytest

from alignloop.data.formats import FormatError, convert, detect, parse_columns, ranking_by_score
from alignloop.data.io import DataError, InputOptions, iter_converted, read_records
from alignloop.data.records import BinaryFeedback, Comparison, Demonstration, PromptRecord

FIXTURES = Path(__file__).parent / "fixtures" / "formats"
EGG = "How do I boil an egg?"
EGG_GOOD = "Put the egg in boiling water for nine minutes, then cool it in cold water."


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.mark.parametrize("name,fmt,record_type,first", [
    ("trl_standard", "trl", Comparison,
     {"prompt": EGG, "responses": [EGG_GOOD, "Eggs are food."], "tiers": [[0], [1]]}),
    ("trl_conversational", "trl", Comparison,
     {"chat": [{"role": "system", "content": "Answer in one sentence."}, {"role": "user", "content": EGG}],
      "responses": [EGG_GOOD, "Eggs are food."]}),
    ("trl_implicit", "trl-implicit", Comparison,
     {"chat": [{"role": "user", "content": EGG}], "responses": [EGG_GOOD, "Eggs are food."]}),
    ("trl_implicit_text", "trl-implicit", Comparison,   # TRL's rule: the space before the difference stays
     {"prompt": f"Question: {EGG} Answer:", "responses": [" " + EGG_GOOD, " Eggs are food."]}),
    ("hh_rlhf", "hh-rlhf", Comparison,
     {"chat": [{"role": "user", "content": EGG}], "responses": [EGG_GOOD, "Eggs are food."]}),
    ("kto", "kto", BinaryFeedback, {"prompt": EGG, "response": EGG_GOOD, "label": 1}),
    ("ratings_completions", "ratings", Comparison,
     {"prompt": EGG, "tiers": [[0, 2], [1]], "meta": {"source": "handwritten", "scores": [8.5, 3.0, 8.5],
                                                     "models": ["m-big", "m-small", "m-mid"]}}),
    ("ratings_parallel", "ratings", Comparison, {"prompt": EGG, "responses": ["Eggs are food.", EGG_GOOD],
                                                 "tiers": [[1], [0]]}),
    ("sft_messages", "sft", Demonstration, {"chat": [{"role": "user", "content": EGG}], "response": EGG_GOOD}),
    ("sft_prompt_completion", "sft", Demonstration, {"prompt": EGG, "response": EGG_GOOD}),
    ("sft_text", "sft", Demonstration, {"chat": [{"role": "user", "content": EGG}], "response": EGG_GOOD}),
])
def test_each_fixture_is_recognised_and_read(name, fmt, record_type, first):
    path = FIXTURES / f"{name}.jsonl"
    assert {f for _, f, _ in iter_converted(path)} == {fmt}
    records = read_records(path, record_type)
    assert len(records) == (24 if name == "kto" else 12)
    r = records[0]
    for key, want in first.items():
        got = r.chat() if key == "chat" else r.tiers() if key == "tiers" else getattr(r, key)
        assert got == want, key
    # forcing the recognised format reads the same records
    assert read_records(path, record_type, InputOptions(format=fmt)) == records


def test_hh_rlhf_multi_turn_keeps_the_earlier_turns_in_the_prompt():
    second = read_records(FIXTURES / "hh_rlhf.jsonl", Comparison)[1]
    assert second.chat() == [{"role": "user", "content": "Hello there."},
                             {"role": "assistant", "content": "Hello! How can I help?"},
                             {"role": "user", "content": "What is the capital of France?"}]
    assert second.responses == ["The capital of France is Paris.", "I would rather not say."]


def test_ratings_ties_equal_scores():
    assert ranking_by_score([7, 9, 7]) == [1, [0, 2]]
    assert ranking_by_score([1.0, 2.0, 3.0]) == [2, 1, 0]
    assert ranking_by_score([5, 5]) == [[0, 1]]


def test_explicit_prompt_repeated_in_the_completion_is_stripped():
    """ultrafeedback_binarized: `prompt` plus `chosen` / `rejected` that repeat the user turn."""
    row = {"prompt": "q", "chosen": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
           "rejected": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "b"}],
           "messages": [], "score_chosen": 8.0, "score_rejected": 3.0, "prompt_id": "x1"}
    out = convert(detect(row), row)
    assert detect(row) == "trl"
    assert out == {"prompt": "q", "responses": ["a", "b"], "ranking": [0, 1],
                   "meta": {"score_chosen": 8.0, "score_rejected": 3.0, "prompt_id": "x1"}}


def test_soft_labels_and_weights_survive_a_trl_round_trip(tmp_path):
    from alignloop.data.io import write_as

    records = [Comparison(prompt="q", responses=["a", "b", "c"], ranking=[2, [0, 1]], weight=3.0, rater="r1",
                          source="human"),
               Comparison(prompt="q2", responses=["x", "y"], p=0.2, weight=0.5)]
    n, summary = write_as(tmp_path / "prefs.jsonl", records, "trl")
    rows = [json.loads(line) for line in (tmp_path / "prefs.jsonl").read_text().splitlines()]
    # K = 3 with a tie: the pairs (2, 0) and (2, 1); the tied pair (0, 1) is left out
    assert n == 3 and "1 tied pairs left out" in summary
    assert [(r["chosen"], r["rejected"], r["p"], r["weight"]) for r in rows] == [
        ("c", "a", 1.0, 1.0), ("c", "b", 1.0, 1.0), ("y", "x", 0.8, 0.5)]
    assert rows[0]["rater"] == "r1" and rows[2]["rater"] is None  # one schema for every row
    back = read_records(tmp_path / "prefs.jsonl", Comparison)
    assert [b.responses for b in back] == [["c", "a"], ["c", "b"], ["y", "x"]]
    assert back[2].p == 0.8 and back[2].weight == 0.5 and back[0].rater == "r1" and back[0].source == "human"
    for out in (tmp_path / "prefs.parquet", tmp_path / "prefs_ds"):
        write_as(out, records, "trl")
        assert [b.responses for b in read_records(out, Comparison)] == [b.responses for b in back]


def test_conversational_trl_and_kto_output():
    from alignloop.data.formats import to_trl

    rows, _ = to_trl([Comparison(messages=[{"role": "system", "content": "s"}, {"role": "user", "content": "q"}],
                                 responses=["a", "b"], ranking=[1, 0])])
    assert rows[0]["prompt"][0] == {"role": "system", "content": "s"}
    assert rows[0]["chosen"] == [{"role": "assistant", "content": "b"}]
    rows, _ = to_trl([BinaryFeedback(prompt="q", response="a", label=0)])
    assert rows == [{"prompt": "q", "completion": "a", "label": False}]
    with pytest.raises(FormatError, match="several kinds"):
        to_trl([BinaryFeedback(prompt="q", response="a", label=0), Comparison(prompt="q", chosen="a", rejected="b")])


@pytest.mark.parametrize("row,fmt,message", [
    ({"chosen": "\n\nHuman: hi\n\nAssistant: yo", "rejected": "\n\nHuman: hi\n\nAssistant: yo"}, None,
     "field 'rejected': the same dialogue as 'chosen' (read as hh-rlhf"),
    ({"chosen": "\n\nHuman: hi\n\nAssistant: yo", "rejected": "\n\nHuman: hey\n\nAssistant: no"}, None,
     "field 'chosen': chosen and rejected share no prompt turns"),
    ({"chosen": "\n\nHuman: hi\n\nAssistant: yo", "rejected": "\n\nHuman: hi\n\nAssistant:"}, None,
     "field 'responses[1]': empty response (read as hh-rlhf"),
    ({"prompt": "q", "completion": "a", "label": "yes"}, None, "field 'label': 'yes' is not a boolean (read as kto"),
    ({"prompt": "q", "completions": [{"response": "a", "score": 1}, {"response": "b", "score": "N/A"}]}, None,
     "field 'scores[1]': 'N/A' is not a number (read as ratings"),
    ({"prompt": "q", "completions": [{"response": "a", "score": 1}, {"text": "b"}]}, None,
     "field 'completions[1].score': missing"),
    ({"prompt": "q", "chosen": [{"role": "assistant", "content": "a"}, {"role": "user", "content": "more"}],
      "rejected": "b"}, None, "field 'chosen': expected one assistant message after the prompt, got 2 turn(s)"),
    ({"chosen": "plain text", "rejected": "other text"}, "hh-rlhf", "field 'chosen': no chat turns found"),
    ({"question": "q", "answer": "a"}, None, "--columns prompt=COLUMN"),
    ({"prompt": "q"}, "kto", "field 'completion': missing (read as kto"),
])
def test_bad_rows_name_file_line_field_and_the_format_taken(tmp_path, row, fmt, message):
    good = {None: {"prompt": "fine", "chosen": "a", "rejected": "b"},
            "hh-rlhf": {"chosen": "\n\nHuman: hi\n\nAssistant: yo", "rejected": "\n\nHuman: hi\n\nAssistant: no"},
            "kto": {"prompt": "fine", "completion": "a", "label": False}}[fmt]
    path = _jsonl(tmp_path / "in.jsonl", [good, row])
    with pytest.raises(DataError) as err:
        read_records(path, BinaryFeedback if fmt == "kto" else Comparison, InputOptions(format=fmt))
    text = str(err.value)
    assert text.startswith(f"{path}:2: ") and message in text and "\n" not in text, text


def test_columns_rename_other_column_names(tmp_path):
    path = _jsonl(tmp_path / "c.jsonl", [{"question": "q", "better": "a", "worse": "b", "prompt": "ignored"}])
    opts = InputOptions(columns=parse_columns("prompt=question,chosen=better,rejected=worse"))
    (r,) = read_records(path, Comparison, opts)
    assert (r.prompt, r.responses) == ("q", ["a", "b"])
    with pytest.raises(DataError, match=r"c.jsonl:1: field 'wrong': missing \(named by --columns"):
        read_records(path, Comparison, InputOptions(columns={"prompt": "wrong"}))
    with pytest.raises(FormatError, match="not FIELD=COLUMN"):
        parse_columns("prompt")


def test_hugging_face_folders_splits_parquet_and_hub_ids(tmp_path, monkeypatch):
    import datasets

    rows = [json.loads(line) for line in (FIXTURES / "hh_rlhf.jsonl").read_text().splitlines()]
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows[:8]),
                          "test": datasets.Dataset.from_list(rows[8:])}).save_to_disk(str(tmp_path / "hh"))
    assert len(read_records(tmp_path / "hh", Comparison)) == 8  # default split: train
    assert len(read_records(f"{tmp_path / 'hh'}:test", Comparison)) == 4
    assert len(read_records(tmp_path / "hh", Comparison, InputOptions(split="test"))) == 4
    with pytest.raises(DataError, match=r"no split 'dev' \(splits: train, test"):
        read_records(f"{tmp_path / 'hh'}:dev", Comparison)
    datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / "hh.parquet"))
    bad = read_records(tmp_path / "hh.parquet", Comparison)
    assert len(bad) == 12 and bad[0].responses[0] == EGG_GOOD

    calls = []

    def load_dataset(name, split):  # the hub, stood in for by the local folder
        calls.append((name, split))
        return datasets.load_from_disk(str(tmp_path / "hh"))[split]

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    assert len(read_records("Anthropic/hh-rlhf", Comparison)) == 8
    assert len(read_records("Anthropic/hh-rlhf:test", Comparison)) == 4
    assert calls == [("Anthropic/hh-rlhf", "train"), ("Anthropic/hh-rlhf", "test")]
    with pytest.raises(DataError, match=r"^Anthropic/hh-rlhf\[train\]: row 1: field 'prompt': missing \(read as kto"):
        read_records("Anthropic/hh-rlhf", BinaryFeedback, InputOptions(format="kto"))


def test_a_missing_file_is_not_mistaken_for_a_hub_id(tmp_path):
    with pytest.raises(DataError, match=r"prompts.jsonl: no such file"):
        read_records(tmp_path / "prompts.jsonl", PromptRecord)


def test_inspect_reports_counts_k_ties_lengths_duplicates_and_the_first_problem(tmp_path, tiny_model_dir):
    from alignloop.data.inspect import inspect_data, report_lines

    r = inspect_data(FIXTURES / "ratings_completions.jsonl", tokenizer=str(tiny_model_dir))
    assert r["format"] == {"ratings": 12} and r["records"] == {"comparison": 12} and r["k"] == {3: 12}
    assert r["ties"] == {"records": 4, "pairs": 4} and r["problems"] == {"count": 0, "first": None}
    assert r["lengths"]["unit"] == f"tokens of {tiny_model_dir}" and r["lengths"]["prompt"]["min"] > 5
    rows = [{"prompt": "q", "responses": ["a", "b"], "p": 0.5}, {"prompt": "q", "chosen": "a", "rejected": "b"},
            {"prompt": "q", "chosen": "a", "rejected": "b"}, {"prompt": "q", "chosen": "same", "rejected": "same"},
            {"prompt": "q", "completion": "a", "label": 2}, {"prompt": "r", "completion": "x", "label": True}]
    r = inspect_data(_jsonl(tmp_path / "mixed.jsonl", rows), tokenizer="none")
    assert r["format"] == {"alignloop": 1, "trl": 3, "kto": 1}  # rows converted and r["records"] == {"comparison": 4, "binary": 1}
    assert r["soft"] == {"records": 1, "half": 1} and r["labels"] == {"good": 1, "bad": 0}
    assert r["prompts"] == {"distinct": 2, "with_several_records": 1, "most_records": 4, "identical_records": 2}
    assert r["problems"]["count"] == 2
    assert r["problems"]["first"] == f"{tmp_path / 'mixed.jsonl'}:4: responses 0 and 1 are the same text but ranked apart"
    text = "\n".join(report_lines(r))
    assert "read as trl (3), alignloop (1), kto (1)" in text and "K (responses per comparison): 2: 4" in text


def test_data_commands_as_a_user_runs_them(tmp_path, capsys):
    from alignloop.cli import main

    main(["data", "inspect", str(FIXTURES / "hh_rlhf.jsonl"), "--tokenizer", "none"])
    out = capsys.readouterr().out
    assert "12 rows, read as hh-rlhf (12)" in out and "records: 12 comparison" in out and "problems: 0" in out
    main(["data", "convert", str(FIXTURES / "hh_rlhf.jsonl"), "--to", "alignloop", "--out", str(tmp_path / "a.jsonl")])
    assert read_records(tmp_path / "a.jsonl", Comparison) == read_records(FIXTURES / "hh_rlhf.jsonl", Comparison)
    main(["data", "convert", str(tmp_path / "a.jsonl"), "--to", "trl", "--out", str(tmp_path / "t.parquet")])
    assert "12 comparison records -> 12 TRL rows (conversational)" in capsys.readouterr().out
    path = _jsonl(tmp_path / "q.jsonl", [{"question": "q", "answer": "a"}])
    main(["data", "inspect", str(path), "--tokenizer", "none", "--columns", "prompt=question,completion=answer",
          "--format", "sft"])
    assert "read as sft (1)" in capsys.readouterr().out


@pytest.mark.parametrize("fixture", ["hh_rlhf", "trl_standard", "trl_conversational", "ratings_completions"])
def test_reward_trains_directly_on_each_preference_format(fixture, tmp_path, tiny_model_dir):
    from alignloop.cli import main

    out = tmp_path / "rm"
    main(["reward", "--model", str(tiny_model_dir), "--data", str(FIXTURES / f"{fixture}.jsonl"), "--out", str(out),
          "--epochs", "1", "--batch-size", "4", "--max-length", "64", "--eval-every", "0", "--save-every", "0",
          "--no-lora"])
    config = json.loads((out / "reward_config.json").read_text())
    assert config["num_heads"] == 1 and config["std"][0] > 0


def test_consensus_writes_trl(tmp_path):
    from alignloop.cli import main

    votes = [{"prompt": f"q{i}", "responses": ["a", "b"], "ranking": [0, 1] if r != "c" else [1, 0], "rater": r,
              "source": "simulated"} for i in range(6) for r in "abc"]
    data = _jsonl(tmp_path / "votes.jsonl", votes)
    main(["quality", "consensus", "--data", str(data), "--method", "majority", "--format", "trl",
          "--out", str(tmp_path / "prefs.parquet")])
    import pyarrow.parquet as pq

    rows = pq.read_table(tmp_path / "prefs.parquet").to_pylist()
    assert len(rows) == 6 and {r["chosen"] for r in rows} == {"a"}
    assert all(0.5 < r["p"] <= 1 and r["weight"] > 0 for r in rows)


def test_feedback_export_writes_trl_and_never_imports_torch(tmp_path, monkeypatch):
    import subprocess
    import sys

    import datasets

    from alignloop.cli import main
    from alignloop.feedback import reports

    db = str(tmp_path / "feedback.db")
    samples = _jsonl(tmp_path / "samples.jsonl", [{"prompt": "q", "responses": ["a", "b", "c"], "model": "m"}])
    main(["feedback", "create", "--db", db, "--samples", str(samples)])
    script = ("import sys; from alignloop.cli import main; main(sys.argv[1:]); "
              "assert 'torch' not in sys.modules, 'torch imported'")
    r = subprocess.run([sys.executable, "-c", script, "feedback", "export", "--db", db, "--format", "trl",
                        "--out", str(tmp_path / "none.parquet")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "wrote 0 TRL rows" in r.stdout, r.stderr
    judged = [Comparison(prompt="q", responses=["a", "b", "c"], ranking=[1, [0, 2]], rater="ann", source="human")]
    monkeypatch.setattr(reports, "export_records", lambda s, ids, include_gold=True: judged)
    main(["feedback", "export", "--db", db, "--format", "trl", "--out", str(tmp_path / "prefs")])
    rows = datasets.load_from_disk(str(tmp_path / "prefs")).to_list()
    assert [(r["chosen"], r["rejected"], r["rater"]) for r in rows] == [("b", "a", "ann"), ("b", "c", "ann")]
