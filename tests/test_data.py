"""Record validation, readers and writers (file, line and field in every error)."""

import json

import pytest

from alignloop.data.io import DataError, read_records, read_sources, to_dataset, write_jsonl, write_records
from alignloop.data.records import Comparison, Demonstration, PromptRecord, Samples


def _jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.mark.parametrize("record_type,row,message", [
    (PromptRecord, {"promt": "typo"}, "field 'prompt': missing"),
    (PromptRecord, {"prompt": "   "}, "field 'prompt': empty"),
    (Demonstration, {"prompt": "hi"}, "field 'response': missing"),
    (Demonstration, {"prompt": "hi", "response": " "}, "field 'response': empty response"),
    (Comparison, {"prompt": "hi", "responses": ["a", "b", "c"], "ranking": [0, 0, 1]}, "field 'ranking'"),
    (Comparison, {"prompt": "hi", "responses": ["a", "b", "c"], "ranking": [0, [1]]}, "not a permutation"),
    (Comparison, {"prompt": "hi", "responses": ["a", ""], "ranking": [0, 1]}, "field 'responses[1]': empty response"),
    (Comparison, {"prompt": "hi", "responses": ["a"], "ranking": [0]}, "at least 2 responses"),
    (Comparison, {"prompt": "hi", "responses": ["a", "b", "c"], "p": 0.5}, "exactly 2 responses"),
    (Comparison, {"prompt": "hi", "responses": ["a", "b"], "p": 1.5}, "field 'p'"),
    (Comparison, {"prompt": "hi", "chosen": "a"}, "field 'rejected': missing"),
    (Comparison, {"prompt": "hi", "responses": ["a", "b"]}, "field 'ranking': missing"),
    (Comparison, {"prompt": "hi", "responses": ["a", "b"], "ranking": [0, 1], "weight": -1}, "field 'weight'"),
])
def test_errors_name_file_line_and_field(tmp_path, record_type, row, message):
    path = _jsonl(tmp_path / "in.jsonl", [{"prompt": "fine", "responses": ["x", "y"], "ranking": [1, 0],
                                           "response": "ok"}, row])
    with pytest.raises(DataError) as err:
        read_records(path, record_type)
    text = str(err.value)
    assert text.startswith(f"{path}:2: "), text
    assert message in text
    assert "\n" not in text


def test_non_utf8_and_bad_json_name_the_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b'{"prompt": "a"}\n{"prompt": "caf\xe9"}\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2: not valid UTF-8"):
        read_records(path, PromptRecord)
    path.write_text('{"prompt": "a"}\n\n{"prompt": "b",}\n')
    with pytest.raises(DataError, match=r"bad.jsonl:3: invalid JSON"):
        read_records(path, PromptRecord)
    path.write_text('["prompt"]\n')
    with pytest.raises(DataError, match=r"bad.jsonl:1: expected a JSON object"):
        read_records(path, PromptRecord)


def test_shorthand_ties_messages_and_soft_labels(tmp_path):
    rows = [
        {"prompt": "q", "chosen": "good", "rejected": "bad"},
        {"prompt": "q", "responses": ["a", "b", "c", "d"], "ranking": [2, [0, 3], 1], "source": "human"},
        {"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "q"}],
         "responses": ["a", "b"], "p": 0.25},
    ]
    recs = read_records(_jsonl(tmp_path / "c.jsonl", rows), Comparison)
    assert recs[0].responses == ["good", "bad"] and recs[0].tiers() == [[0], [1]]
    assert recs[1].tiers() == [[2], [0, 3], [1]]
    assert recs[2].tiers() == [[1], [0]]
    assert recs[2].chat()[-1] == {"role": "user", "content": "q"}
    demo = Demonstration.model_validate({"messages": [{"role": "user", "content": "q"},
                                                      {"role": "assistant", "content": "a"}]})
    assert demo.response == "a" and demo.chat() == [{"role": "user", "content": "q"}]


def test_parquet_and_datasets_round_trip(tmp_path):
    rows = [{"id": str(i), "prompt": f"p{i}", "responses": ["a", "b"], "model": "m", "sampling": {"seed": i}}
            for i in range(5)]
    write_records(tmp_path / "s.parquet", rows)
    assert [r.id for r in read_records(tmp_path / "s.parquet", Samples)] == [str(i) for i in range(5)]
    to_dataset(rows).save_to_disk(str(tmp_path / "ds"))
    back = read_records(tmp_path / "ds", Samples)
    assert back[3].sampling == {"seed": 3} and back[3].responses == ["a", "b"]
    bad = [{"prompt": "p"}, {"responses": ["a"]}]
    write_records(tmp_path / "bad.parquet", bad)
    with pytest.raises(DataError, match=r"bad.parquet: row 2: field 'prompt'"):
        read_records(tmp_path / "bad.parquet", PromptRecord)


def test_writes_are_atomic(tmp_path):
    out = tmp_path / "out.jsonl"
    write_jsonl(out, [{"prompt": "old"}])

    def rows():
        yield {"prompt": "new"}
        raise RuntimeError("crash mid-write")

    with pytest.raises(RuntimeError):
        write_jsonl(out, rows())
    assert out.read_text() == '{"prompt": "old"}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["out.jsonl"]


def test_several_sources_joined_with_commas_are_read_in_order(tmp_path):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    write_jsonl(a, [{"prompt": "one"}, {"prompt": "two"}])
    write_jsonl(b, [{"prompt": "three"}])
    assert [r.prompt for r in read_sources(f"{a},{b}", PromptRecord)] == ["one", "two", "three"]
    assert [r.prompt for r in read_sources(a, PromptRecord)] == ["one", "two"]
    odd = tmp_path / "x,y.jsonl"  # a file whose name has a comma is one source
    write_jsonl(odd, [{"prompt": "four"}])
    assert [r.prompt for r in read_sources(odd, PromptRecord)] == ["four"]
    with pytest.raises(DataError, match="missing.jsonl: no such file"):
        read_sources(f"{a},{tmp_path / 'missing.jsonl'}", PromptRecord)
