"""Every kind of model artifact loaded the documented way (plain transformers for full weights,
`AutoPeftModelForCausalLM` on `<artifact>/model` for an adapter) and through `align export`
gives align's own model (logits within 1e-4); an adapter whose base exists only merged in
memory refuses the documented load instead of loading onto the wrong weights; `align push`
refuses such an adapter and `--merged` pushes the export."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import write_recipe

FAST = {"per_device_train_batch_size": 4, "learning_rate": 1e-2, "logging_steps": 1,
        "disable_tqdm": True, "max_steps": 2, "save_steps": 100, "max_length": 64}
SFT = {"train": {"world": "sft", "max_samples": 16}}
PAIRS = {"train": {"world": "preference_train", "max_samples": 16}}

STAGES = {
    "sft_full": {"kind": "sft", "method": "full", "data": SFT, "args": FAST},
    "sft_lora": {"kind": "sft", "method": "lora", "data": SFT, "args": FAST},
    "sft_qlora": {"kind": "sft", "method": "qlora", "data": SFT, "args": FAST},
    # an adapter on a merged adapter upstream: its base is nowhere on disk
    "dpo_chain": {"kind": "dpo", "from": "sft_lora", "method": "lora", "data": PAIRS, "args": FAST},
    # an adapter on a full upstream: its base is the upstream's model/ directory
    "dpo_on_full": {"kind": "dpo", "from": "sft_full", "method": "lora", "data": PAIRS,
                    "args": FAST},
    # QLoRA on an adapter upstream: the merged upstream is stored in the artifact's base/
    "qlora_chain": {"kind": "sft", "from": "sft_lora", "method": "qlora", "data": SFT,
                    "args": FAST},
    "rm_lora": {"kind": "rm", "from": "sft_lora", "method": "lora", "data": PAIRS, "args": FAST},
}


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_model):
    from align.runner import run_recipe

    tmp = tmp_path_factory.mktemp("export")
    path = write_recipe(tmp, STAGES, name="export", model={"name_or_path": str(tiny_model)})
    return run_recipe(path)


def logits(model, tokenizer):
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of Vexland?"},
         {"role": "assistant", "content": "The capital is Orvo."}],
        tokenize=True, return_dict=True, return_tensors="pt")["input_ids"]
    model.eval()
    with torch.no_grad():
        return model(input_ids=ids).logits.float()


@pytest.mark.slow
@pytest.mark.parametrize("name", ["sft_full", "sft_lora", "sft_qlora", "dpo_on_full",
                                  "qlora_chain", "dpo_chain"])
def test_documented_loading_and_export_give_aligns_model(run, name, tmp_path):
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from align.modeling import export_model, load_artifact_model

    artifact = run[name]
    tokenizer = AutoTokenizer.from_pretrained(str(artifact.model_path()))
    ours = logits(load_artifact_model(artifact), tokenizer)

    if artifact.manifest.model.type == "full":
        documented = AutoModelForCausalLM.from_pretrained(str(artifact.model_path()))
    elif name == "dpo_chain":
        config = json.loads((artifact.model_path() / "adapter_config.json").read_text())
        assert "align export" in config["base_model_name_or_path"]
        with pytest.raises(Exception, match="align export"):
            AutoPeftModelForCausalLM.from_pretrained(str(artifact.model_path()))
        documented = None
    else:
        documented = AutoPeftModelForCausalLM.from_pretrained(str(artifact.model_path()))
    if documented is not None:
        assert (logits(documented, tokenizer) - ours).abs().max().item() < 1e-4

    out = export_model(artifact, tmp_path / "export")
    assert (out / "model.safetensors").exists() and not (out / "adapter_config.json").exists()
    assert (out / "chat_template.jinja").exists() or "chat_template" in json.loads(
        (out / "tokenizer_config.json").read_text())
    exported = AutoModelForCausalLM.from_pretrained(str(out))
    exported_tokenizer = AutoTokenizer.from_pretrained(str(out))
    assert (logits(exported, exported_tokenizer) - ours).abs().max().item() < 1e-4


@pytest.mark.slow
def test_export_cli_and_reward_model(run, tmp_path):
    from transformers import AutoModelForSequenceClassification

    from align.cli import main
    from align.modeling import load_artifact_model

    artifact = run["rm_lora"]
    assert main(["export", str(artifact.path), "--out", str(tmp_path / "rm")]) == 0
    exported = AutoModelForSequenceClassification.from_pretrained(str(tmp_path / "rm"))
    ours = load_artifact_model(artifact).eval()
    ids = torch.tensor([[1, 5, 9, 12, 3]])
    with torch.no_grad():
        assert (exported.eval()(input_ids=ids).logits - ours(input_ids=ids).logits).abs().max() < 1e-4
    assert main(["export", str(artifact.path), "--out", str(tmp_path / "rm")]) == 2  # not empty


@pytest.mark.slow
def test_push_refuses_a_chained_adapter_and_pushes_it_merged(run, hub, monkeypatch, capsys):
    from align.cli import main

    monkeypatch.setenv("HF_TOKEN", "hf_" + "x" * 30)
    chained = str(run["dpo_chain"].path)
    assert main(["push", chained, "--repo-id", "me/chained"]) == 2
    err = capsys.readouterr().err
    assert "--merged" in err and "sft_lora" in err
    assert main(["push", chained, "--repo-id", "me/chained", "--merged"]) == 0
    files = hub.files("me/chained")
    assert "model.safetensors" in files and "adapter_config.json" not in files
    assert b"merged" in files["README.md"]


@pytest.mark.slow
def test_chat_one_shot_streams_the_greedy_answer(run, capsys):
    from align.cli import main
    from align.generation import generate_answers
    from align.modeling import load_artifact_model, load_tokenizer

    artifact = run["sft_lora"]
    question = "What is the capital of Vexland?"
    assert main(["chat", str(artifact.path), "--prompt", question, "--max-new-tokens", "12"]) == 0
    streamed = capsys.readouterr().out.strip()
    expected = generate_answers(load_artifact_model(artifact),
                                load_tokenizer(artifact.tokenizer_path()), [question],
                                max_new_tokens=12)[0][0]
    assert streamed == expected and streamed


@pytest.mark.slow
def test_chat_loop_keeps_the_conversation(run, capsys, monkeypatch):
    import io

    from align.chat import Chat
    from align.cli import main

    artifact = run["dpo_chain"]
    monkeypatch.setattr("sys.stdin", io.StringIO("Who leads Vexland?\n\nWhat is its currency?\n"))
    assert main(["chat", str(artifact.path), "--max-new-tokens", "6"]) == 0
    assert capsys.readouterr().out.count("\n") >= 2  # one streamed answer per turn

    chat = Chat(str(artifact.path), max_new_tokens=6, out=io.StringIO())
    turns = chat.loop(io.StringIO("Who leads Vexland?\nWhat is its currency?\n/exit\nignored\n"))
    assert turns == 2
    assert [m["role"] for m in chat.messages] == ["user", "assistant", "user", "assistant"]
    assert chat.out.getvalue().count("\n") == 2
