"""Pushing artifacts to the Hub: exactly which files go up, the model card, token hygiene, and how
each Hub failure is reported. Everything runs against `fake_hub` on 127.0.0.1; the `hub_loopback`
fixture (conftest.py) points every endpoint huggingface_hub knows at loopback so nothing can reach
huggingface.co.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard, constants
from safetensors.torch import save_file

from align.artifacts import MANIFEST, Manifest, ModelRef, load_artifact, write_json_atomic
from align.errors import AlignError
from align.hub import (
    PushResult,
    _scrub,
    format_plan,
    model_card,
    push_artifact,
    scrub_paths,
    upload_plan,
)
from fake_hub import FakeHub

TOKEN = "hf_TESTTOKEN_do_not_leak_123"
REPO = "tester/tiny-sft"
TOKENIZER = {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
             "chat_template.jinja"}
JUNK = ("checkpoints/checkpoint-2/optimizer.pt", "checkpoints/checkpoint-2/rng_state.pth",
        "checkpoints/checkpoint-2/scheduler.pt", "checkpoints/checkpoint-2/trainer_state.json",
        "checkpoints/checkpoint-2/adapter_model.safetensors", "training_args.bin",
        "model/optimizer.pt", "model/rng_state.pth", "model/training_args.bin",
        "model/scheduler.pt", "model/trainer_state.json", "model/README.md")


# Every test here runs with the Hub at loopback only (conftest.hub_loopback); `hub` (conftest) is
# the fake Hub itself.
pytestmark = pytest.mark.usefixtures("hub_loopback")


def _stage_config(**overrides) -> dict:
    config = {
        "kind": "sft",
        "from": ["pretrain"],
        "data": {
            "train": [{"hub": "org/chat-data", "split": "train", "path": None},
                      {"path": "/home/alice/secret/train.jsonl"},
                      {"world": "sft"},
                      "hub:org/more-data"],
            "eval": [{"hub": "org/chat-data", "split": "test"}, {"hub": "org/eval-set"}],
            "eval_fraction": 0.0,
        },
        "method": {"type": "lora", "lora": {"r": 8, "alpha": 16}},
        "args": {"learning_rate": 1e-4, "num_train_epochs": 1},
        "options": {"stop": "</s>", "cache": "~/cache/align", "url": "https://example.org/a/b"},
        "push_to_hub": {"repo_id": REPO, "private": False, "revision": None},
    }
    config.update(overrides)
    return config


def make_artifact(base: Path, *, type="adapter", method="lora", root="Qwen/Qwen2.5-0.5B",
                  model_base=None, kind="sft", task="causal-lm", config=None, metrics=None,
                  sharded=False, pickle_only=False, with_model=True) -> Path:
    """A finished artifact directory shaped like a real one, with training junk around it."""
    path = base / f"art-{type}-{method}-{kind}"
    model_dir = path / "model"
    model_dir.mkdir(parents=True)
    tensors = {"w": torch.arange(4, dtype=torch.float32)}
    if with_model and type == "adapter":
        save_file(tensors, model_dir / "adapter_model.safetensors")
        (model_dir / "adapter_config.json").write_text(json.dumps(
            {"peft_type": "LORA", "r": 8, "base_model_name_or_path": str(base / "hf" / "qwen")}))
    if with_model and type == "full":
        if pickle_only:
            torch.save(tensors, model_dir / "pytorch_model.bin")
        elif sharded:
            save_file({"a": torch.zeros(2)}, model_dir / "model-00001-of-00002.safetensors")
            save_file({"b": torch.ones(2)}, model_dir / "model-00002-of-00002.safetensors")
            (model_dir / "model.safetensors.index.json").write_text(json.dumps({
                "metadata": {"total_size": 16},
                "weight_map": {"a": "model-00001-of-00002.safetensors",
                               "b": "model-00002-of-00002.safetensors"}}))
        else:
            save_file(tensors, model_dir / "model.safetensors")
        (model_dir / "config.json").write_text(json.dumps(
            {"model_type": "llama", "_name_or_path": str(base / "upstream" / "model")}))
        (model_dir / "generation_config.json").write_text(json.dumps({"do_sample": False}))
        if not pickle_only:  # a pickle next to safetensors must still stay local
            torch.save(tensors, model_dir / "pytorch_model.bin")
    if with_model:
        (model_dir / "tokenizer.json").write_text(json.dumps({"model": {"type": "BPE"}}))
        (model_dir / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|end|>"}))
        (model_dir / "special_tokens_map.json").write_text(json.dumps({"eos_token": "<|end|>"}))
        (model_dir / "chat_template.jinja").write_text("{{ messages }}")
    for rel in JUNK:
        (path / rel).parent.mkdir(parents=True, exist_ok=True)
        (path / rel).write_bytes(b"junk that must never be uploaded")
    (path / "metrics.jsonl").write_text("{}\n")
    model = (ModelRef(type=type, path="model", base=model_base, root=root, method=method, task=task)
             if with_model else None)
    manifest = Manifest(
        name=kind, kind=kind, status="complete", config_hash="0123456789abcdef",
        config=config if config is not None else _stage_config(kind=kind),
        inputs={"pretrain": "fedcba9876543210"}, model=model,
        files={} if with_model else {"sft": "data/sft.jsonl"},
        metrics=metrics if metrics is not None else
        {"train_loss": 1.2345678, "eval": {"loss": 1.5, "accuracy": float("nan")}},
        versions={"python": "3.11", "trl": "1.16.0", "transformers": "5.0.0", "peft": "0.21.0"},
    )
    write_json_atomic(path / MANIFEST, manifest.to_dict())
    return path


def tree_digest(path: Path) -> dict[str, str]:
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file()}


def push(path, **kw) -> PushResult:
    kw.setdefault("token", TOKEN)
    kw.setdefault("retry_delay", 0.01)
    return push_artifact(path, REPO, **kw)


# ---------------------------------------------------------------------------------------------
# what goes up


def test_adapter_push_commits_exactly_adapter_tokenizer_and_card(tmp_path, hub):
    art = make_artifact(tmp_path)
    before = tree_digest(art)

    result = push(art)

    assert len(hub.commits) == 1  # one commit, card included
    files = hub.files(REPO)
    assert set(files) == {"adapter_model.safetensors", "adapter_config.json", "README.md"} | TOKENIZER
    assert files["adapter_model.safetensors"] == (art / "model/adapter_model.safetensors").read_bytes()
    assert files["tokenizer.json"] == (art / "model/tokenizer.json").read_bytes()
    assert files["README.md"].decode() == result.card
    assert sorted(result.files) == sorted(files)
    assert result.commit_url and result.commit_url.startswith(hub.url)
    assert result.revision is None and result.retries == 0
    assert tree_digest(art) == before  # the local artifact is only read
    create = hub.requests_to("/api/repos/create")
    assert len(create) == 1 and create[0]["authorization"] == f"Bearer {TOKEN}"
    assert {r["authorization"] for r in hub.requests if r["path"].startswith("/api/models")} \
        == {f"Bearer {TOKEN}"}


def test_adapter_config_points_at_the_hub_base_not_a_local_path(tmp_path, hub):
    art = make_artifact(tmp_path)
    push(art)
    committed = json.loads(hub.files(REPO)["adapter_config.json"])
    assert committed["base_model_name_or_path"] == "Qwen/Qwen2.5-0.5B"
    assert committed["r"] == 8
    for name, data in hub.files(REPO).items():
        assert str(tmp_path).encode() not in data, name


def test_full_push_commits_weights_configs_tokenizer_never_pickles(tmp_path, hub):
    art = make_artifact(tmp_path, type="full", method="full", sharded=True)
    push(art)
    files = hub.files(REPO)
    assert set(files) == ({"model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
                           "model.safetensors.index.json", "config.json", "generation_config.json",
                           "README.md"} | TOKENIZER)
    assert json.loads(files["config.json"])["_name_or_path"] == "<local>"
    assert json.loads(files["config.json"])["model_type"] == "llama"


def test_upload_plan_is_an_allowlist(tmp_path):
    art = load_artifact(make_artifact(tmp_path, type="full", method="freeze"))
    plan = upload_plan(art)
    names = [repo for _, repo in plan]
    assert set(names) == {"model.safetensors", "config.json", "generation_config.json"} | TOKENIZER
    for local, repo in plan:
        assert local.parent == (art.path / "model").resolve() and local.name == repo
    assert not any(n.endswith((".bin", ".pt", ".pth")) or "checkpoint" in n for n in names)


def test_data_only_artifact_is_refused(tmp_path, hub):
    art = make_artifact(tmp_path, kind="idk", with_model=False)
    with pytest.raises(AlignError, match="holds no model"):
        push(art)
    with pytest.raises(AlignError, match="holds no model"):
        push(art, dry_run=True)
    assert hub.requests == []


def test_pickle_only_full_model_is_refused(tmp_path, hub):
    art = make_artifact(tmp_path, type="full", method="full", pickle_only=True)
    with pytest.raises(AlignError, match="pickle") as err:
        push(art)
    assert "pytorch_model.bin" in str(err.value) and "safetensors" in str(err.value)
    assert hub.requests == []


def test_bad_repo_id_is_refused_before_anything(tmp_path, hub):
    art = make_artifact(tmp_path)
    with pytest.raises(AlignError, match="owner/name"):
        push_artifact(art, "just-a-name", token=TOKEN)
    assert hub.requests == []


def test_revision_creates_the_branch_and_commits_there(tmp_path, hub):
    art = make_artifact(tmp_path)
    result = push(art, revision="v1")
    assert result.revision == "v1"
    assert hub.requests_to("/branch/v1", "POST")
    assert set(hub.files(REPO, "v1")) >= {"adapter_model.safetensors", "README.md"}
    assert hub.files(REPO, "main") == {}
    push(art, revision="v1", commit_message="again")  # existing repo and branch are fine
    assert [c.summary for c in hub.commits][-1] == "again"
    assert len(hub.commits) == 2


# ---------------------------------------------------------------------------------------------
# the model card


def test_card_metadata_for_an_adapter_on_a_hub_model(tmp_path):
    art = load_artifact(make_artifact(tmp_path))
    card = model_card(art, REPO)
    data = ModelCard(card).data
    assert data.base_model == "Qwen/Qwen2.5-0.5B"
    assert data.library_name == "peft"
    assert data.pipeline_tag == "text-generation"
    assert data.tags == ["align", "sft", "trl", "lora"]
    assert data.datasets == ["org/chat-data", "org/more-data", "org/eval-set"]
    assert f'AutoPeftModelForCausalLM.from_pretrained("{REPO}")' in card
    assert f'AutoTokenizer.from_pretrained("{REPO}")' in card
    assert "learning_rate: 0.0001" in card  # the resolved recipe block
    assert "| train_loss | 1.235 |" in card and "| eval.loss | 1.5 |" in card


def test_card_for_a_local_root_omits_base_model_and_says_so(tmp_path):
    art = load_artifact(make_artifact(tmp_path, root="tiny"))
    card = model_card(art, REPO)
    assert "base_model" not in ModelCard(card).data.to_dict()
    assert "local model" in card and "`tiny`" in card
    assert "PeftModel.from_pretrained(base" in card  # AutoPeft could not find a local base

    local_root = tmp_path / "models" / "my-base"
    art2 = load_artifact(make_artifact(tmp_path / "b", root=str(local_root)))
    card2 = model_card(art2, REPO)
    assert "base_model" not in ModelCard(card2).data.to_dict()
    assert str(tmp_path) not in card2


def test_card_scrubs_local_paths_but_not_urls_ids_or_tokens(tmp_path):
    art = load_artifact(make_artifact(tmp_path, model_base=str(tmp_path / "sft" / "model")))
    card = model_card(art, REPO, run_report=f"see {tmp_path}/report.md")
    assert "/home/alice" not in card and str(tmp_path) not in card and "~/cache" not in card
    assert "path: <local>" in card and "cache: <local>" in card
    assert "https://example.org/a/b" in card and "</s>" in card and "org/chat-data" in card
    assert "applies to the weights of the upstream stage" in card  # base is not the root
    assert scrub_paths("C:\\Users\\bob\\m and /opt/x y") == "<local> and <local> y"


def test_card_for_a_full_reward_model(tmp_path):
    art = load_artifact(make_artifact(tmp_path, type="full", method="full", kind="rm",
                                      task="sequence-classification"))
    card = model_card(art, REPO)
    data = ModelCard(card).data
    assert data.library_name == "transformers" and data.pipeline_tag == "text-classification"
    assert data.tags == ["align", "rm", "trl"]
    assert f'AutoModelForSequenceClassification.from_pretrained("{REPO}")' in card


def test_card_qlora_tag_honesty_table_and_no_datasets(tmp_path):
    config = _stage_config(data={"train": [{"world": "sft"}]})
    art = load_artifact(make_artifact(tmp_path, method="qlora", config=config))
    report = "| stage | accuracy | hallucination |\n|---|---|---|\n| sft | 80.0% | 12.0% |"
    card = model_card(art, REPO, run_report=report)
    data = ModelCard(card).data
    assert "qlora" in data.tags and "datasets" not in data.to_dict()
    assert "## Honesty" in card and "| sft | 80.0% | 12.0% |" in card


# ---------------------------------------------------------------------------------------------
# the token


def test_token_never_leaks_anywhere(tmp_path, hub, capfd, caplog):
    caplog.set_level(logging.DEBUG)
    art = make_artifact(tmp_path)
    hub.commit_failures = [503]  # exercise the retry/log path too
    result = push(art)
    failing = FakeHub(valid_token="someone-else").start()
    try:
        with pytest.raises(AlignError) as err:
            push(art, endpoint=failing.url)
    finally:
        failing.stop()
    dry = push(art, dry_run=True)
    out, errout = capfd.readouterr()
    for text in (out, errout, caplog.text, repr(result), str(result.__dict__), result.card,
                 format_plan(result), format_plan(dry), str(err.value), repr(err.value)):
        assert TOKEN not in text
    for data in hub.files(REPO).values():
        assert TOKEN.encode() not in data
    assert TOKEN not in "".join(c.summary + c.description for c in hub.commits)


def test_scrub_removes_token_and_bearer_values():
    text = f"401 for Bearer {TOKEN} (token {TOKEN}) and hf_{'a' * 34}"
    cleaned = _scrub(text, TOKEN)
    assert TOKEN not in cleaned and "hf_" + "a" * 34 not in cleaned
    assert _scrub("nothing secret", None) == "nothing secret"


def test_token_comes_from_env_then_saved_login(tmp_path, hub, monkeypatch):
    art = make_artifact(tmp_path)
    monkeypatch.setenv("HF_TOKEN", "hf_from_env")
    push_artifact(art, REPO, retry_delay=0.01)
    assert hub.requests_to("/api/repos/create")[-1]["authorization"] == "Bearer hf_from_env"

    monkeypatch.delenv("HF_TOKEN")
    Path(constants.HF_TOKEN_PATH).parent.mkdir(parents=True, exist_ok=True)
    Path(constants.HF_TOKEN_PATH).write_text("hf_saved_login\n")
    push_artifact(art, REPO, retry_delay=0.01)
    assert hub.requests_to("/api/repos/create")[-1]["authorization"] == "Bearer hf_saved_login"

    push_artifact(art, REPO, token=TOKEN, retry_delay=0.01)  # the argument wins
    assert hub.requests_to("/api/repos/create")[-1]["authorization"] == f"Bearer {TOKEN}"


def test_no_token_is_an_align_error(tmp_path, hub):
    art = make_artifact(tmp_path)
    with pytest.raises(AlignError) as err:
        push_artifact(art, REPO)
    assert "HF_TOKEN" in str(err.value) and "hf auth login" in str(err.value)
    assert hub.requests == []


# ---------------------------------------------------------------------------------------------
# failures


def test_invalid_token_401(tmp_path, hub):
    hub.valid_token = "hf_the_right_one"
    art = make_artifact(tmp_path)
    before = tree_digest(art)
    with pytest.raises(AlignError) as err:
        push(art)
    message = str(err.value)
    assert "401" in message and "invalid" in message and "expired" in message
    assert TOKEN not in message and "\n" not in message
    assert hub.commits == [] and tree_digest(art) == before


def test_forbidden_403_says_no_write_access(tmp_path, hub):
    hub.forbid_create = True
    art = make_artifact(tmp_path)
    with pytest.raises(AlignError) as err:
        push(art)
    message = str(err.value)
    assert "403" in message and "write access" in message and REPO in message
    assert "belongs to another user" in message
    assert TOKEN not in message and hub.commits == []


@pytest.mark.parametrize("status", [429, 503])
def test_rate_limit_and_server_errors_are_retried(tmp_path, hub, status):
    hub.commit_failures = [status, status]
    art = make_artifact(tmp_path)
    result = push(art)
    assert result.retries == 2
    assert len(hub.requests_to("/commit/main", "POST")) == 3
    assert len(hub.commits) == 1 and "README.md" in hub.files(REPO)


def test_rate_limit_gives_up_after_max_retries(tmp_path, hub):
    hub.commit_failures = [429] * 10
    art = make_artifact(tmp_path)
    with pytest.raises(AlignError) as err:
        push(art, max_retries=2)
    assert "429" in str(err.value) and "2 retries" in str(err.value)
    assert len(hub.requests_to("/commit/main", "POST")) == 3 and hub.commits == []


def test_server_down_says_the_hub_could_not_be_reached(tmp_path, hub_loopback):
    dead = hub_loopback  # where nothing listens
    art = make_artifact(tmp_path)
    before = tree_digest(art)
    with pytest.raises(AlignError) as err:
        push(art)
    message = str(err.value)
    assert "could not be reached" in message and dead in message and "HF_ENDPOINT" in message
    assert TOKEN not in message and tree_digest(art) == before


# ---------------------------------------------------------------------------------------------
# dry run


def test_dry_run_makes_no_request_and_needs_no_token(tmp_path, hub):
    art = make_artifact(tmp_path)
    result = push_artifact(art, REPO, dry_run=True)
    assert hub.requests == []
    assert result.commit_url is None and result.dry_run
    assert set(result.files) == {"adapter_model.safetensors", "adapter_config.json",
                                 "README.md"} | TOKENIZER
    text = format_plan(result)
    assert text.startswith(f"would upload to {REPO}")
    size = (art / "model/adapter_model.safetensors").stat().st_size
    assert "adapter_model.safetensors" in text and f"{size} B" in text
    assert result.card in text and "optimizer" not in text


def test_lineage_follows_the_model_chain_and_names_data_stages_apart(tmp_path):
    from align.artifacts import Manifest, ModelRef, load_artifact, write_json_atomic
    from align.hub import upstream_stages

    def stage(name, inputs, model=True):
        (tmp_path / name).mkdir()
        manifest = Manifest(name=name, kind=name, status="complete", config_hash=name, config={},
                            inputs={i: i for i in inputs},
                            model=ModelRef(type="full", path="model") if model else None)
        write_json_atomic(tmp_path / name / "artifact.json", manifest.to_dict())

    stage("pretrain", [])
    stage("sft", ["pretrain"])
    stage("idk", ["sft"], model=False)
    stage("rm", ["sft", "idk"])
    stage("ppo", ["sft", "rm", "idk"])
    assert upstream_stages(load_artifact(tmp_path / "ppo")) == (["pretrain", "sft"], ["idk"])
