"""KTO: binary feedback (a thumbs export, TRL's unpaired rows, converted comparisons), learning a
planted preference, z0 from mismatched pairs, gradient accumulation and two processes."""

import json
import random

import pytest
import torch

from alignloop.configs import KTOConfig
from alignloop.train.kto import binary_records, run_kto
from alignloop.train.tracking import read_metrics
from tests.test_reward import MARKER, WORDS, _response


def thumbs(path, n, seed, shuffle=False, trl=False, desirable_share=0.5):
    """Rows as `alignloop feedback export` writes a thumbs campaign (or TRL's prompt/completion/label):
    a response with MARKER is good (1), one without bad (0)."""
    rng = random.Random(seed)
    with open(path, "w") as f:
        for i in range(n):
            prompt = f"Write something about the {rng.choice(WORDS)}."
            good = rng.random() < desirable_share
            label = int(good if not shuffle else rng.random() < 0.5)
            response = _response(rng, good)
            row = ({"prompt": prompt, "completion": response, "label": bool(label)} if trl else
                   {"id": f"c/j{i}/r0", "prompt": prompt, "response": response, "label": label, "rater": "r1",
                    "source": "human", "meta": {"kind": "thumbs", "response_index": 0}})
            f.write(json.dumps(row) + "\n")
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("kto")
    return {"train": thumbs(d / "train.jsonl", 160, 0), "heldout": thumbs(d / "heldout.jsonl", 60, 1),
            "trl": thumbs(d / "trl.jsonl", 160, 0, trl=True), "shuffled": thumbs(d / "shuffled.jsonl", 160, 0, shuffle=True)}


def _cfg(tiny_model_dir, data_path, heldout, out, **kw):
    base = dict(model=str(tiny_model_dir), data=data_path, heldout=heldout, out=out, epochs=3, batch_size=8, lora=True,
                learning_rate=1e-2, beta=0.1, eval_every=0, save_every=0, seed=0, max_length=48)
    return KTOConfig(**{**base, **kw})


def test_comparisons_are_converted_best_desirable_worst_undesirable(tmp_path):
    path = tmp_path / "c.jsonl"
    rows = [{"prompt": "a", "chosen": "x", "rejected": "y"},
            {"prompt": "b", "responses": ["p", "q", "r"], "ranking": [1, [0, 2]]},
            {"prompt": "c", "responses": ["s", "t"], "p": 0.3},
            {"prompt": "d", "responses": ["u", "v"], "p": 0.5},  # no preferred side: left out
            {"prompt": "e", "response": "w", "label": 0}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    got = [(r.prompt, r.response, r.label) for r in binary_records(path)]
    assert got == [("a", "x", 1), ("a", "y", 0), ("b", "q", 1), ("b", "p", 0), ("b", "r", 0), ("c", "t", 1),
                   ("c", "s", 0), ("e", "w", 0)]


def test_trl_unpaired_rows_read_as_the_thumbs_export(data):
    def fields(path):
        return [(r.prompt, r.response, r.label) for r in binary_records(path)]

    assert fields(data["trl"]) == fields(data["train"])


def test_learns_a_planted_preference(tiny_model_dir, data, tmp_path):
    out = run_kto(_cfg(tiny_model_dir, data["train"], data["heldout"], tmp_path / "kto"))
    rows = read_metrics(out)
    final = rows[-1]
    assert final["eval/rewards/margin"] > 0.2 and final["eval/rewards/accuracy"] > 0.8, final  # accuracy: on its side of z0
    assert all(r["kl/z0"] >= 0 for r in rows if "kl/z0" in r)
    assert (out / "adapter_model.safetensors").exists()


def test_shuffled_labels_learn_no_margin(tiny_model_dir, data, tmp_path):
    out = run_kto(_cfg(tiny_model_dir, data["shuffled"], data["heldout"], tmp_path / "shuffled"))
    final = read_metrics(out)[-1]
    assert final["eval/rewards/accuracy"] < 0.75 and abs(final["eval/rewards/margin"]) < 0.2, final


def test_imbalanced_data_gets_a_weight_suggestion(tiny_model_dir, tmp_path, capsys):
    path = thumbs(tmp_path / "imb.jsonl", 40, 0, desirable_share=0.2)
    run_kto(_cfg(tiny_model_dir, path, None, tmp_path / "imb", epochs=1, stop_at_step=1, heldout_fraction=0.0))
    assert "outside the paper's [1, 4/3]" in capsys.readouterr().out


@pytest.mark.numerics
def test_gradient_accumulation_equals_a_bigger_batch(tiny_model_dir, data, tmp_path):
    def first_step(name, **kw):
        out = tmp_path / name
        run_kto(_cfg(tiny_model_dir, data["train"], None, out, epochs=1, stop_at_step=1, heldout_fraction=0.0,
                     optimizer="sgd", learning_rate=0.5, warmup_ratio=0.0, **kw))
        return torch.load(out / "checkpoint" / "trainable.pt"), read_metrics(out)[-1]

    (a, ma), (b, mb) = first_step("big", batch_size=8), first_step("acc", batch_size=2, grad_accum=4)
    assert max(v.abs().max().item() for k, v in a.items() if "lora_B" in k) > 1e-4
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-6
    assert ma["kl/z0"] == pytest.approx(mb["kl/z0"], abs=1e-6) and ma["train/loss"] == pytest.approx(mb["train/loss"], abs=1e-6)


@pytest.mark.numerics
def test_two_processes_match_one(two_process_runs, tmp_path):
    from tests.two_processes import job_config

    run = two_process_runs
    assert [r["kto"] for r in run["results"]] == ["ok", "ok"]
    one, two = run_kto(job_config("kto", run["files"], tmp_path / "one", processes=1)), run["root"] / "kto"
    a, b = (torch.load(out / "checkpoint" / "trainable.pt") for out in (one, two))
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-6
    for r1, r2 in zip(read_metrics(one), read_metrics(two), strict=True):
        for key in ("train/loss", "kl/z0", "eval/loss", "eval/rewards/margin"):
            assert (key in r1) == (key in r2), key
            if key in r1:
                assert r1[key] == pytest.approx(r2[key], rel=1e-6, abs=1e-5), key


def test_kto_command(tiny_model_dir, data, tmp_path):
    from alignloop.cli import main

    main(["kto", "--model", str(tiny_model_dir), "--data", str(data["trl"]), "--out", str(tmp_path / "out"),
          "--epochs", "1", "--max-length", "48", "--undesirable-weight", "1.2", "--no-lora", "--learning-rate", "1e-4"])
    assert (tmp_path / "out" / "model.safetensors").exists() and (tmp_path / "out" / "reference_logps.pt").exists()
