"""Loading models for a stage: the upstream model exactly, then the stage's tuning method.

Hand-off rule: a stage starts from *the upstream model*. When the upstream holds an adapter,
it is merged into its base in the compute dtype (also for a QLoRA upstream, whose base is
re-loaded unquantised), so the new stage and its reference model see exactly the weights the
upstream stage evaluated. Bases are resolved recursively, so adapter chains cost no extra disk.
"""

from __future__ import annotations

import os
from pathlib import Path

from align.artifacts import MANIFEST, Artifact, load_artifact
from align.errors import AlignError
from align.kinds import model_kinds

# Functions here take a recipe's `model` settings and a stage's `method` (recipe.MethodSpec) as
# plain objects: the recipe module imports this one to check model directories.
# torch, transformers and peft are imported inside the functions that use them: `align validate`
# imports this module, and importing peft alone costs it seconds (26 s on a loaded 2-core
# machine, against 1.3 s for all of `align.validate` without it).

DTYPES = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}


def torch_dtype(name: str | None):
    import torch

    if name in (None, "auto"):
        return "auto"
    return getattr(torch, DTYPES[name])


def load_tokenizer(ref: str | Path, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(ref), trust_remote_code=trust_remote_code)
    except ValueError as exc:
        refuse_remote_code(ref, exc)
        raise
    except (OSError, AlignError):
        raise
    except Exception as exc:  # tokenizers' own parse errors of a damaged tokenizer.json
        if not Path(ref).is_dir():
            raise
        raise AlignError(f"could not load the tokenizer in {ref}: {' '.join(str(exc).split())}. "
                         "Its files are damaged; restore them or rebuild the artifact.") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _auto_class(task: str):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    return AutoModelForSequenceClassification if task == "sequence-classification" else AutoModelForCausalLM


def load_full(ref: str | Path, *, task: str = "causal-lm", dtype=None, quantization=None,
              trust_remote_code: bool = False, attn_implementation: str | None = None, **kwargs):
    """Weights from a directory or Hub id; safetensors only (pickles can execute code)."""
    kw = dict(dtype=dtype or "auto", trust_remote_code=trust_remote_code, use_safetensors=True,
              **kwargs)
    if attn_implementation:
        kw["attn_implementation"] = attn_implementation
    if quantization is not None:
        kw["quantization_config"] = quantization
    if task == "sequence-classification":
        kw.setdefault("num_labels", 1)
    if Path(ref).exists():  # a local directory: its shape and weights, before transformers reads it
        check_local_model(Path(ref), None)
    try:
        return _auto_class(task).from_pretrained(str(ref), **kw)
    except OSError as exc:
        raise AlignError(f"could not load model weights from '{ref}': {exc}. align loads "
                         "safetensors only (pickled .bin weights can run code when loaded).") from None
    except ValueError as exc:
        refuse_remote_code(ref, exc)
        raise


def refuse_remote_code(ref, exc: Exception) -> None:
    """Turn transformers' refusal to run a model's own code into a recipe-level instruction."""
    if "trust_remote_code" in str(exc):
        raise AlignError(f"'{ref}' ships its own Python code, which align does not run unless "
                         "the recipe says so: set `model.trust_remote_code: true` if you trust "
                         "that code.") from None


def artifact_base(artifact: Artifact) -> str:
    """Where an adapter artifact's base lives: a directory, an artifact, or a Hub id."""
    base = artifact.manifest.model.base
    local = (artifact.path / base) if not os.path.isabs(base) else Path(base)
    return str(local.resolve()) if local.exists() else base


def load_artifact_model(artifact: Artifact, *, task: str | None = None, dtype=None,
                        trust_remote_code: bool = False, **kwargs):
    """The exact model an artifact holds, as plain transformers weights (adapters merged)."""
    ref = artifact.manifest.model
    task = task or ref.task
    if ref.type == "full":
        return load_full(artifact.model_path(), task=task, dtype=dtype,
                         trust_remote_code=trust_remote_code, **kwargs)
    base = artifact_base(artifact)
    if (Path(base) / MANIFEST).exists():
        model = load_artifact_model(load_artifact(base), task=task, dtype=dtype,
                                    trust_remote_code=trust_remote_code, **kwargs)
    else:
        model = load_full(base, task=task, dtype=dtype, trust_remote_code=trust_remote_code,
                          **kwargs)
    return merge_adapter(model, artifact.model_path())


def merge_adapter(model, adapter_dir: Path):
    from peft import PeftConfig, PeftModel

    config = PeftConfig.from_pretrained(str(adapter_dir))
    if config.is_prompt_learning:
        # Virtual tokens cannot be folded into weights; keep the PEFT wrapper (inference only).
        return PeftModel.from_pretrained(model, str(adapter_dir))
    # Merging needs no task wrapper, and a causal-LM adapter merges as well into the same
    # weights under a sequence-classification head (a reward model started from a LoRA SFT).
    config.task_type = None
    merged = PeftModel.from_pretrained(model, str(adapter_dir), config=config).merge_and_unload()
    # Loading an adapter for inference freezes every base weight; the merged model is a start
    # model like any other (a full fine-tune after a LoRA stage must train all of it).
    merged.requires_grad_(True)
    return merged


def load_start_model(start: Artifact | str, *, task: str = "causal-lm", dtype=None,
                     method=None, merged_dir: Path | None = None,
                     is_main: bool = True, wait=lambda: None, **kwargs):
    """The model a stage starts from: an upstream artifact exactly (adapters merged) or the base
    model (`start` a loadable path or id), 4-bit when `method` is qlora.

    QLoRA quantises from full weights on disk, so an adapter upstream is merged once into
    `merged_dir` (by the main process; `wait` lets the other ranks catch up)."""
    quantized = method is not None and method.type == "qlora"
    if not quantized:
        if isinstance(start, Artifact):
            return load_artifact_model(start, task=task, dtype=dtype, **kwargs)
        return load_full(start, task=task, dtype=dtype, **kwargs)
    source = start
    if isinstance(start, Artifact):
        source = str(start.model_path())
        if start.manifest.model.type != "full":
            if not (merged_dir / "config.json").exists() and is_main:
                load_artifact_model(start, task=task, dtype=dtype, **kwargs).save_pretrained(merged_dir)
            wait()
            source = str(merged_dir)
    q = quantization_config(method)
    kwargs.pop("revision", None)
    return load_full(source, task=task, dtype=q.bnb_4bit_compute_dtype, quantization=q, **kwargs)


def quantization_config(method):
    from transformers import BitsAndBytesConfig

    q = method.quantization
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=q.quant_type,
                              bnb_4bit_use_double_quant=q.double_quant,
                              bnb_4bit_compute_dtype=torch_dtype(q.compute_dtype),
                              bnb_4bit_quant_storage=torch_dtype(q.compute_dtype))


def peft_config(method, task: str = "causal-lm"):
    """The PEFT config of a method (None for full and freeze), handed to the TRL trainer."""
    from peft import LoraConfig, PrefixTuningConfig, PromptEncoderConfig, TaskType

    task_type = TaskType.SEQ_CLS if task == "sequence-classification" else TaskType.CAUSAL_LM
    if method.type in ("lora", "qlora"):
        lora = method.lora
        return LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                          target_modules=lora.target_modules, task_type=task_type)
    if method.type == "ptuning":
        return PromptEncoderConfig(task_type=task_type, num_virtual_tokens=method.num_virtual_tokens,
                                   encoder_hidden_size=method.encoder_hidden_size)
    if method.type == "prefix":
        return PrefixTuningConfig(task_type=task_type, num_virtual_tokens=method.num_virtual_tokens)
    return None


def freeze_bottom_layers(model, trainable_layers: int) -> None:
    """`freeze`: only the top N decoder layers (and what follows them) learn."""
    layers = _decoder_layers(model)
    if trainable_layers > len(layers):
        raise AlignError(f"method freeze: trainable_layers={trainable_layers} but the model has "
                         f"only {len(layers)} layers.")
    for p in model.parameters():
        p.requires_grad = False
    for layer in layers[len(layers) - trainable_layers:]:
        for p in layer.parameters():
            p.requires_grad = True
    backbone = getattr(model, model.base_model_prefix, model)
    norm = getattr(backbone, "norm", None)
    if norm is not None:
        for p in norm.parameters():
            p.requires_grad = True
    head = model.get_output_embeddings() or getattr(model, "score", None)
    if head is not None and head.weight is not model.get_input_embeddings().weight:
        for p in head.parameters():
            p.requires_grad = True


def _decoder_layers(model):
    backbone = getattr(model, model.base_model_prefix, model)
    layers = getattr(backbone, "layers", None) or getattr(backbone, "h", None)
    if layers is None:
        raise AlignError(f"method freeze: cannot find the decoder layers of {type(model).__name__}.")
    return list(layers)


def count_trainable(model) -> tuple[int, int]:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, total


# -- an adapter's base as PEFT reads it, and the standalone export ------------------------------

ADAPTER_CONFIG = "adapter_config.json"


def unmerged_base_marker(upstream: str) -> str:
    """What an adapter whose base exists only merged in memory records as its base: not a path
    and not a Hub id (it holds spaces), so `AutoPeftModel*.from_pretrained` refuses it, naming
    what to do, instead of loading the adapter onto the wrong weights."""
    return (f"align: this adapter applies to the merged model of the upstream artifact "
            f"'{upstream}', which is not stored as plain weights; run `align export` on this "
            f"artifact for a standalone model")


def plain_base(final_dir: Path, base: str, partial_dir: Path | None = None) -> str:
    """The `base_model_name_or_path` that makes PEFT's documented loading
    (`AutoPeftModelForCausalLM.from_pretrained(<artifact>/model)`) give the model align loads:
    the absolute path of the base's full weights, or the Hub id; for an adapter upstream
    (merged only in memory) a marker that refuses to load (`unmerged_base_marker`)."""
    if partial_dir is not None and not os.path.isabs(base):
        inner = (partial_dir / base).resolve()
        if inner.exists() and partial_dir.resolve() in inner.parents:
            return os.path.normpath(final_dir / base)  # inside this artifact (QLoRA's merged base)
    # Lexically: the final directory does not exist yet when the manifest is written.
    local = Path(os.path.normpath(base if os.path.isabs(base) else final_dir / base))
    if (local / MANIFEST).exists():
        upstream = load_artifact(local)
        if upstream.manifest.model is not None and upstream.manifest.model.type == "full":
            return str(upstream.model_path().resolve())
        return unmerged_base_marker(upstream.name)
    if local.exists():
        return str(local.resolve())
    return base


def set_adapter_base(adapter_dir: Path, value: str) -> None:
    """Rewrite the adapter config's `base_model_name_or_path` (PEFT records the model it wrapped,
    which for a merged upstream is the raw root, not the weights the adapter was trained on)."""
    import json

    path = Path(adapter_dir) / ADAPTER_CONFIG
    if not path.exists():
        return
    config = json.loads(path.read_text())
    if config.get("base_model_name_or_path") != value:
        config["base_model_name_or_path"] = value
        path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def export_model(artifact: Artifact, out: Path, *, trust_remote_code: bool = False) -> Path:
    """One standalone model: the artifact's whole adapter chain merged into full weights
    (safetensors), its tokenizer and chat template; loadable with plain
    `AutoModelForCausalLM.from_pretrained(out)` (`AutoModelForSequenceClassification` for a
    reward model)."""
    from transformers import AutoTokenizer

    ref = artifact.manifest.model
    if ref is None:
        raise AlignError(f"artifact '{artifact.name}' ({artifact.manifest.kind} stage, "
                         f"{artifact.path}) holds no model to export; export the artifact of a "
                         f"stage that trains a model ({', '.join(model_kinds())}).")
    if ref.method in ("ptuning", "prefix"):
        raise AlignError(f"artifact '{artifact.name}' is a {ref.method} adapter: its virtual "
                         "tokens cannot be merged into weights, so there is no standalone model "
                         "to export; load it with PEFT on its base.")
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise AlignError(f"'{out}' exists and is not empty; export into a new directory.")
    model = load_artifact_model(artifact, trust_remote_code=trust_remote_code)
    if ref.task == "sequence-classification" and model.config.pad_token_id is None:
        tokenizer_pad = load_tokenizer(artifact.tokenizer_path(), trust_remote_code).pad_token_id
        model.config.pad_token_id = tokenizer_pad
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out), safe_serialization=True)
    AutoTokenizer.from_pretrained(str(artifact.tokenizer_path()),
                                  trust_remote_code=trust_remote_code).save_pretrained(str(out))
    return out


# ---------------------------------------------------------------------------------------------
# Model directories checked before any work: shape, config.json, intact safetensors


def check_safetensors(path: Path) -> str | None:
    """Why a .safetensors file is unusable (truncated, corrupt header), or None when its header
    parses and the tensors it describes end exactly at the end of the file."""
    import json
    import struct

    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            head = f.read(8)
            if len(head) < 8:
                return f"{size} bytes, shorter than a safetensors header"
            (length,) = struct.unpack("<Q", head)
            if length > size - 8 or length > 100_000_000:
                return "its header is cut short (the file is truncated or not safetensors)"
            header = json.loads(f.read(length).decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, struct.error):
        return "its header is not valid safetensors JSON (the file is corrupt)"
    if not isinstance(header, dict):
        return "its header is not a JSON object (the file is corrupt)"
    end = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        offsets = info.get("data_offsets") if isinstance(info, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2
                and all(isinstance(o, int) for o in offsets) and 0 <= offsets[0] <= offsets[1]):
            return f"tensor '{name}' has no valid data_offsets (the file is corrupt)"
        end = max(end, offsets[1])
    if 8 + length + end != size:
        return (f"{size} bytes, but its header describes {8 + length + end}: the file is "
                "truncated or corrupt")
    return None


def check_local_model(path: Path, key: str | None) -> None:
    """A local model directory align can load: a directory, config.json that is a JSON object,
    safetensors weights (an index's shards all present) whose files are intact."""
    import json

    path = Path(path)
    lead = f"'{key}': " if key else "model: "
    if not path.exists():
        raise AlignError(f"{lead}{path} does not exist (a local model directory was "
                         "expected; a Hub id has the form owner/name).")
    if not path.is_dir():
        raise AlignError(f"{lead}{path} is a file; a model is a directory holding "
                         "config.json and *.safetensors weights.")
    config = path / "config.json"
    if not config.is_file():
        raise AlignError(f"{lead}the model directory {path} has no config.json, so it is not "
                         "a model transformers can load; point it at the directory that "
                         "save_pretrained wrote.")
    try:
        if not isinstance(json.loads(config.read_text(encoding="utf-8")), dict):
            raise ValueError
    except (ValueError, UnicodeDecodeError):
        raise AlignError(f"{lead}{config} is not a valid JSON object; the model directory is "
                         "damaged.") from None
    index = path / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            shards = sorted(set(weight_map.values()))
        except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError):
            raise AlignError(f"{lead}{index} is not a valid safetensors index.") from None
        weights = [path / s for s in shards]
        missing = [s for s, w in zip(shards, weights) if not w.is_file()]
        if missing:
            raise AlignError(f"{lead}{index} names shards missing from {path}: "
                             f"{', '.join(missing)}.")
    else:
        weights = sorted(p for p in path.glob("*.safetensors") if p.is_file())
    if not weights:
        pickles = sorted(p.name for p in path.glob("*.bin") if p.name != "training_args.bin")
        extra = (f" (only pickled {', '.join(pickles)}: align loads safetensors only, as "
                 "pickles can run code when loaded)") if pickles else ""
        raise AlignError(f"{lead}the model directory {path} has no *.safetensors weights"
                         f"{extra}.")
    for weight in weights:
        problem = check_safetensors(weight)
        if problem:
            raise AlignError(f"{lead}{weight} cannot be loaded: {problem}. Restore or re-save "
                             "the model.")


def model_layer_count(path: Path) -> int | None:
    """`num_hidden_layers` (or `n_layer`) from a model directory's config.json, if it says."""
    import json

    try:
        config = json.loads((Path(path) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    for key in ("num_hidden_layers", "n_layer", "num_layers"):
        if isinstance(config.get(key), int):
            return config[key]
    text = config.get("text_config")
    if isinstance(text, dict) and isinstance(text.get("num_hidden_layers"), int):
        return text["num_hidden_layers"]
    return None


def module_names(path: Path | None) -> list[str] | None:
    """The module names of the model in a local directory (None: the tiny model's Llama
    architecture), built on the meta device from its config: no weights are read. None when the
    config cannot be read this way (custom code, unknown architecture)."""
    try:
        from accelerate import init_empty_weights
        from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig

        if path is None:
            config = LlamaConfig(vocab_size=16, hidden_size=8, intermediate_size=16,
                                 num_hidden_layers=1, num_attention_heads=1, num_key_value_heads=1)
        else:
            config = AutoConfig.from_pretrained(str(path), trust_remote_code=False)
        with init_empty_weights():
            model = AutoModelForCausalLM.from_config(config)
        return [name for name, _ in model.named_modules() if name]
    except Exception:  # any failure only means this check cannot be made here
        return None
