"""`alignloop export`: the exported folders load with plain transformers and agree with alignloop.

"Plain transformers" is checked in a fresh subprocess, run from a folder outside the repository,
in which `alignloop` and `peft` are blocked (sys.modules[name] = None: `import` raises
ImportError and importlib.util.find_spec answers None, exactly as when they are not installed).
Saved folders name their base so that a moved run folder, or one on a machine with the same
model cache, still loads.
"""

import json
import shutil
import subprocess
import sys

import pytest
import torch

from alignloop.config import LoraOptions

BLOCKED = """
import sys
for name in ("alignloop", "peft"):
    sys.modules[name] = None  # as if not installed
import importlib.util
assert importlib.util.find_spec("peft") is None and importlib.util.find_spec("alignloop") is None
try:
    import alignloop  # noqa: F401
    raise SystemExit("alignloop is importable")
except ImportError:
    pass
import json
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer
args = json.loads(sys.argv[1])
"""

GENERATE = BLOCKED + """
model, tok = AutoModelForCausalLM.from_pretrained(args["folder"]), AutoTokenizer.from_pretrained(args["folder"])
out = []
for chat in args["chats"]:
    ids = tok.apply_chat_template(chat, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    gen = model.generate(**ids, do_sample=False, max_new_tokens=args["max_new_tokens"])
    out.append(gen[0, ids["input_ids"].shape[1]:].tolist())
print(json.dumps({"tokens": out, "modules": sorted(m for m in ("peft", "alignloop") if sys.modules.get(m))}))
"""

SCORE = BLOCKED + """
model, tok = AutoModelForSequenceClassification.from_pretrained(args["folder"]), AutoTokenizer.from_pretrained(args["folder"])
texts = [tok.apply_chat_template(c, tokenize=False, add_generation_prompt=True) + r + tok.eos_token
         for c, r in zip(args["chats"], args["responses"])]
batch = tok(texts, add_special_tokens=False, padding=True, return_tensors="pt")  # right-padded
with torch.no_grad():
    logits = model(**batch).logits
print(json.dumps({"logits": logits.tolist(), "offset": model.config.reward_offset,
                  "num_labels": model.config.num_labels, "pad_is_eos": tok.pad_token_id == tok.eos_token_id}))
"""

CHATS = [[{"role": "user", "content": "How do I boil an egg?"}],
         [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a colour."}],
         [{"role": "user", "content": "What is the capital of France?"}]]
RESPONSES = ["Put it in boiling water for nine minutes.", "Red.", "Paris is the capital of France, by the river."]


def plain(script: str, tmp_path, **args) -> dict:
    """Run `script` in a fresh interpreter outside the repository; its JSON answer."""
    cwd = tmp_path / "elsewhere"
    cwd.mkdir(exist_ok=True)
    r = subprocess.run([sys.executable, "-c", script, json.dumps(args)], cwd=cwd, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def randomise_lora(model, seed: int) -> None:
    """Fresh LoRA has B = 0 (the adapter changes nothing): give B weights so folding it in shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)


@pytest.fixture(scope="module")
def lora_policy(tiny_model_dir, tmp_path_factory):
    from alignloop.models.loading import apply_lora, load_causal_lm, load_tokenizer, save_model

    model = apply_lora(load_causal_lm(str(tiny_model_dir)), LoraOptions(lora_rank=4))
    randomise_lora(model, 0)
    out = tmp_path_factory.mktemp("policy") / "sft"
    save_model(model, load_tokenizer(str(tiny_model_dir)), out, base=str(tiny_model_dir))
    return out


def reward_folder(tiny_model_dir, out, heads: int):
    from alignloop.models.loading import apply_lora, load_causal_lm, load_tokenizer
    from alignloop.models.reward_model import RewardNet, save_reward_model

    lm = apply_lora(load_causal_lm(str(tiny_model_dir)), LoraOptions(lora_rank=4))
    randomise_lora(lm, 1)
    net = RewardNet(lm, heads)
    with torch.no_grad():
        net.head.bias.copy_(torch.linspace(-0.5, 0.7, heads))
    save_reward_model(net, load_tokenizer(str(tiny_model_dir)), out, base=str(tiny_model_dir),
                      mean=[0.3, -0.2, 0.1][:heads], std=[2.0, 0.5, 1.5][:heads], max_length=128)
    return out


def test_policy_export_generates_alignloop_tokens_with_plain_transformers(lora_policy, tiny_model_dir, tmp_path):
    from alignloop.cli import main
    from alignloop.models.generation import Sampling, generate
    from alignloop.models.loading import load_causal_lm, load_tokenizer

    out = tmp_path / "exported"
    main(["export", "policy", str(lora_policy), "--out", str(out)])
    assert not (out / "adapter_config.json").exists() and "peft" not in (out / "config.json").read_text()
    ours = generate(load_causal_lm(str(lora_policy)), load_tokenizer(str(lora_policy)), CHATS,
                    Sampling(temperature=0, max_new_tokens=16, batch_size=1), show_progress=False)
    theirs = plain(GENERATE, tmp_path, folder=str(out), chats=CHATS, max_new_tokens=16)
    assert theirs["modules"] == []
    eos = load_tokenizer(str(lora_policy)).eos_token_id
    cut = [t[: t.index(eos) + 1] if eos in t else t for t in theirs["tokens"]]
    assert cut == ours.response_ids
    # the LoRA was folded in: the exported weights are the adapted ones, not the base's
    from safetensors.torch import load_file

    key = "model.layers.0.self_attn.q_proj.weight"
    exported = load_file(out / "model.safetensors")[key]
    assert not torch.equal(exported, load_file(tiny_model_dir / "model.safetensors")[key])
    assert torch.equal(exported, load_causal_lm(str(lora_policy)).state_dict()[key])


def test_reward_export_logit_plus_offset_is_alignloop_score(tiny_model_dir, tmp_path):
    from alignloop.export import ExportRewardConfig, run_export_reward
    from alignloop.models.reward_model import RewardModel

    folder = reward_folder(tiny_model_dir, tmp_path / "reward", heads=1)
    out = run_export_reward(ExportRewardConfig(reward=str(folder), out=tmp_path / "exported"))
    ours = RewardModel.load(folder).score(CHATS, RESPONSES)
    theirs = plain(SCORE, tmp_path, folder=str(out), chats=CHATS, responses=RESPONSES)
    assert theirs["num_labels"] == 1 and not theirs["pad_is_eos"]
    logits = torch.tensor(theirs["logits"])[:, 0]
    assert torch.allclose(logits + theirs["offset"], torch.tensor(ours), atol=1e-4), (logits, ours)
    assert abs(theirs["offset"]) > 0.1  # the bias and mean really are in the offset, not lost


def test_ensemble_exports_one_head_with_e_outputs_or_one_member(tiny_model_dir, tmp_path):
    from alignloop.export import ExportRewardConfig, run_export_reward
    from alignloop.models.reward_model import RewardModel

    folder = reward_folder(tiny_model_dir, tmp_path / "reward3", heads=3)
    mean, spread, members = RewardModel.load(folder).score_ensemble(CHATS, RESPONSES)
    joint = plain(SCORE, tmp_path, folder=str(run_export_reward(ExportRewardConfig(reward=str(folder),
                                                                                 out=tmp_path / "all"))),
                  chats=CHATS, responses=RESPONSES)
    scores = torch.tensor(joint["logits"]) + torch.tensor(joint["offset"])  # (N, E)
    assert joint["num_labels"] == 3
    assert torch.allclose(scores, members, atol=1e-4) and torch.allclose(scores.mean(-1), mean, atol=1e-4)
    assert torch.allclose(scores.std(-1), spread, atol=1e-4)
    one = plain(SCORE, tmp_path, folder=str(run_export_reward(ExportRewardConfig(reward=str(folder), member=1,
                                                                               out=tmp_path / "m1"))),
                chats=CHATS, responses=RESPONSES)
    assert one["num_labels"] == 1
    assert torch.allclose(torch.tensor(one["logits"])[:, 0] + one["offset"], members[:, 1], atol=1e-4)


def test_export_refuses_to_replace_a_folder_it_did_not_write(lora_policy, tmp_path):
    from alignloop.config import ConfigError
    from alignloop.export import ExportPolicyConfig, run_export_policy

    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="not an alignloop export"):
        run_export_policy(ExportPolicyConfig(model=str(lora_policy), out=tmp_path / "mine"))
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_a_moved_run_folder_still_finds_its_base(tiny_model_dir, tmp_path):
    from alignloop.models.loading import load_causal_lm, model_info

    from alignloop.models.loading import apply_lora, load_tokenizer, save_model

    run = tmp_path / "run"
    shutil.copytree(tiny_model_dir, run / "model")

    model = apply_lora(load_causal_lm(str(run / "model")), LoraOptions(lora_rank=4))
    randomise_lora(model, 3)
    save_model(model, load_tokenizer(str(run / "model")), run / "sft", base=str(run / "model"))
    info = json.loads((run / "sft" / "alignloop_model.json").read_text())
    assert info["base"] == "../model" and info["base_path"] == str((run / "model").resolve())
    before = load_causal_lm(str(run / "sft")).model.layers[0].self_attn.q_proj.weight.clone()
    moved = tmp_path / "elsewhere" / "run"
    shutil.move(run, moved)
    assert model_info(str(moved / "sft"))["base"] == str(moved / "sft" / "../model")
    after = load_causal_lm(str(moved / "sft")).model.layers[0].self_attn.q_proj.weight
    assert torch.equal(before, after)


def test_a_registry_base_is_recorded_by_name_not_cache_path(tiny_model_dir, tmp_path, monkeypatch):
    from alignloop.models import loading, registry
    from alignloop.models.loading import apply_lora, load_causal_lm, load_tokenizer, save_model

    monkeypatch.setenv("ALIGNLOOP_HOME", str(tmp_path / "home"))
    monkeypatch.setitem(registry.BUNDLED, "tiny-registered", registry.BundledModel("none", "none.gguf", "-"))
    monkeypatch.setattr(loading, "BUNDLED", registry.BUNDLED)
    cache = tmp_path / "home" / "models" / "tiny-registered"
    shutil.copytree(tiny_model_dir, cache)
    model = apply_lora(load_causal_lm("tiny-registered"), LoraOptions(lora_rank=4))
    save_model(model, load_tokenizer("tiny-registered"), tmp_path / "a", base="tiny-registered")
    adapter = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    info = json.loads((tmp_path / "a" / "alignloop_model.json").read_text())
    assert adapter["base_model_name_or_path"] == "tiny-registered" == info["base"]
    assert info["base_path"] == str(cache)
    # the cache folder given as a path is recorded by its registry name too
    save_model(model, load_tokenizer("tiny-registered"), tmp_path / "b", base=str(cache))
    assert json.loads((tmp_path / "b" / "alignloop_model.json").read_text())["base"] == "tiny-registered"
    load_causal_lm(str(tmp_path / "a"))
