"""Publishing an artifact's model to the Hugging Face Hub.

What is uploaded comes from an allowlist (weights or adapter, their configs, the tokenizer), never
from "everything in the directory": artifacts also hold optimizer states, Trainer checkpoints, RNG
states and pickles that are large, useless to a reader, and unsafe to load. Everything, model card
included, goes up in ONE commit, so a failed push leaves the repo as it was; the local artifact is
only ever read.

The token is resolved here and never appears in an error message, a log line, the card or the
returned `PushResult`: every message built from a Hub error goes through `_scrub`.

Card metadata choice: `base_model` must be a valid Hub id or the Hub rejects the card, so when the
lineage root is local (the embedded "tiny" model, a directory) the key is omitted and the card text
says the base was local, rather than emitting a placeholder the Hub would refuse.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

from align.artifacts import MANIFEST, Artifact, load_artifact, read_manifest
from align.errors import AlignError
from align.honesty.abstention import POLICY_FILE, copy_policy
from align.kinds import KINDS, model_kinds
from align.modeling import artifact_base, export_model
from align.recipe import HUB_ID, check_repo_id

ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
SAFETENSORS_INDEX = "model.safetensors.index.json"
FULL_CONFIG_FILES = ("config.json", "generation_config.json")
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
    "chat_template.jinja", "chat_template.json", "vocab.json", "merges.txt", "vocab.txt",
    "tokenizer.model", "spiece.model", "sentencepiece.bpe.model",
)
# Top-level keys of small JSON configs where libraries record where a model was loaded from: a
# local absolute path there would leak the user's file layout into a public repo.
_LOCATION_KEYS = ("base_model_name_or_path", "_name_or_path", "name_or_path", "tokenizer_file")
_LOCATION_FILES = (ADAPTER_CONFIG, "config.json", "generation_config.json", "tokenizer_config.json")

RETRY_STATUS = (429, 500, 502, 503, 504)
LOCAL = "<local>"
MAX_BACKOFF_S = 60.0

METHOD_TEXT = {
    "full": "full fine-tune",
    "freeze": "partial fine-tune (only the top layers trained)",
    "lora": "LoRA adapter",
    "qlora": "QLoRA adapter (LoRA trained over a 4-bit quantised base)",
    "ptuning": "P-tuning adapter (trained virtual tokens)",
    "prefix": "prefix-tuning adapter",
}

# An absolute local path inside a longer string: POSIX, home-relative or Windows. The lookbehind
# keeps URLs ("https://..."), Hub ids ("org/name"), relative paths ("./x", "a/b") and special
# tokens ("</s>") intact.
_ABS_PATH = re.compile(r"(?<![\w.~:/\\<-])(?:~|[A-Za-z]:)?[/\\][^\s'\"`<>|,;()\[\]{}]+")
_WHOLE_ABS_PATH = re.compile(r"^(?:~|[A-Za-z]:)?[/\\]\S*$")


@dataclass
class PushResult:
    """What a push did (or, for a dry run, would do). Holds no token by construction."""

    repo_id: str
    revision: str | None
    files: list[str]
    commit_url: str | None
    card: str = field(repr=False)
    sizes: dict[str, int] = field(default_factory=dict, repr=False)
    retries: int = 0
    dry_run: bool = False


# ---------------------------------------------------------------------------------------------
# What to upload


def upload_plan(artifact: Artifact) -> list[tuple[Path, str]]:
    """(local file, path in repo) for everything a user needs to load the model, and nothing else.

    Files are picked by name from `model.path` only (no globbing of the artifact), so new kinds of
    training leftovers can never slip into a public repo.
    """
    model = artifact.manifest.model
    if model is None:
        raise AlignError(
            f"artifact '{artifact.name}' ({artifact.manifest.kind} stage, {artifact.path}) holds no "
            "model, so there is nothing to push to the Hub; push the artifact of a stage that trains "
            f"a model ({', '.join(model_kinds())}).")
    root = artifact.path.resolve()
    model_dir = (artifact.path / model.path).resolve()
    if model_dir != root and root not in model_dir.parents:
        raise AlignError(f"artifact '{artifact.name}' ({artifact.path}) names a model directory "
                         f"outside itself ('{model.path}'); refusing to upload from there.")
    if not model_dir.is_dir():
        raise AlignError(f"artifact '{artifact.name}' ({artifact.path}): its model directory "
                         f"'{model.path}' is missing; the artifact is incomplete, rerun the stage.")

    def present(name: str) -> bool:
        return (model_dir / name).is_file()

    names: list[str] = []
    if model.type == "adapter":
        if not present(ADAPTER_WEIGHTS):
            pickled = present("adapter_model.bin")
            raise AlignError(
                f"artifact '{artifact.name}' ({artifact.path}): the adapter in '{model.path}' has no "
                f"{ADAPTER_WEIGHTS}" + (" (only a pickled adapter_model.bin, which is unsafe to "
                                        "share; re-save it with safetensors)" if pickled else "")
                + "; nothing safe to push.")
        if not present(ADAPTER_CONFIG):
            raise AlignError(f"artifact '{artifact.name}' ({artifact.path}): the adapter in "
                             f"'{model.path}' has no {ADAPTER_CONFIG}, so it could not be loaded.")
        names += [ADAPTER_WEIGHTS, ADAPTER_CONFIG]
    elif model.type == "full":
        names += _full_weight_files(artifact, model_dir)
        if not present("config.json"):
            raise AlignError(f"artifact '{artifact.name}' ({artifact.path}): the model in "
                             f"'{model.path}' has no config.json, so it could not be loaded.")
        names += [n for n in FULL_CONFIG_FILES if present(n)]
    else:
        raise AlignError(f"artifact '{artifact.name}' ({artifact.path}) has an unknown model type "
                         f"'{model.type}' (expected 'full' or 'adapter').")
    names += [n for n in TOKENIZER_FILES if present(n)]
    if present(POLICY_FILE):  # an abstain stage's threshold: without it the model answers all
        names.append(POLICY_FILE)
    return [(model_dir / n, n) for n in dict.fromkeys(names)]


def _full_weight_files(artifact: Artifact, model_dir: Path) -> list[str]:
    index = model_dir / SAFETENSORS_INDEX
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (json.JSONDecodeError, KeyError, AttributeError, TypeError):
            raise AlignError(f"artifact '{artifact.name}': {index} is not a valid safetensors "
                             "index (no weight_map); the model cannot be pushed.") from None
        missing = [s for s in shards if "/" in s or not (model_dir / s).is_file()]
        if missing:
            raise AlignError(f"artifact '{artifact.name}': {index} names shards that are not in "
                             f"the model directory: {', '.join(missing)}.")
        return [*shards, SAFETENSORS_INDEX]
    shards = sorted(p.name for p in model_dir.glob("*.safetensors") if p.is_file())
    if shards:
        return shards
    pickles = sorted(p.name for p in model_dir.glob("*.bin") if p.name != "training_args.bin")
    if pickles:
        raise AlignError(
            f"artifact '{artifact.name}' ({artifact.path}): the model is stored only as pickle "
            f"({', '.join(pickles)}), which runs arbitrary code when loaded; align does not push "
            "pickles. Re-save it with safetensors (model.save_pretrained(dir, safe_serialization=True)) "
            "and push again.")
    raise AlignError(f"artifact '{artifact.name}' ({artifact.path}): no model weights "
                     "(*.safetensors) in its model directory; nothing to push.")


def chained_upstream(artifact: Artifact) -> str | None:
    """For an adapter whose base is not the lineage root but an upstream stage's weights (an
    upstream artifact, or the merged upstream a QLoRA stage keeps in its `base/`): that upstream's
    name. A Hub user could not reconstruct such a base from the adapter alone."""
    model = artifact.manifest.model
    if model is None or model.type != "adapter" or not model.base:
        return None
    base = Path(artifact_base(artifact))
    if (base / MANIFEST).exists():
        return base.name
    if base.exists() and artifact.path.resolve() in base.resolve().parents:
        return next(iter(artifact.manifest.inputs), "upstream")  # QLoRA's merged upstream
    return None


def _refuse_chained_adapter(artifact: Artifact) -> None:
    upstream = chained_upstream(artifact)
    if upstream is None:
        return
    raise AlignError(
        f"artifact '{artifact.name}' is an adapter trained on the weights of upstream stage "
        f"'{upstream}' (not on the base model), which a Hub user could not reconstruct from "
        "this adapter: push the standalone merged model instead with `align push "
        f"{artifact.path} --repo-id ... --merged` (or export it with `align export`).")


def _merged_export(artifact: Artifact) -> tuple[Artifact, list[tuple[Path, str]]]:
    """(the artifact as a full model held in a temporary export, the files to upload)."""
    import atexit
    import dataclasses
    import shutil
    import tempfile

    model = artifact.manifest.model
    if model is None:
        upload_plan(artifact)  # raises the "holds no model" error
    out = Path(tempfile.mkdtemp(prefix="align-export-")) / "model"
    atexit.register(shutil.rmtree, out.parent, True)  # the upload reads it until then
    export_model(artifact, out)
    manifest = dataclasses.replace(
        artifact.manifest, model=dataclasses.replace(model, type="full", base=None,
                                                     path=os.path.relpath(out, artifact.path)))
    merged = Artifact(artifact.path, manifest)
    names = _full_weight_files(merged, out) + [n for n in FULL_CONFIG_FILES
                                              if (out / n).is_file()]
    names += [n for n in TOKENIZER_FILES if (out / n).is_file()]
    if copy_policy(artifact.model_path(), out):  # an abstain stage's threshold
        names.append(POLICY_FILE)
    return merged, [(out / n, n) for n in dict.fromkeys(names)]


# ---------------------------------------------------------------------------------------------
# The model card


def looks_like_hub_id(value: str | None) -> bool:
    """`owner/name` that is not an existing local directory (the same rule transformers applies
    when it decides between loading locally and downloading)."""
    if not value or not HUB_ID.match(value) or ".." in value or "--" in value:
        return False
    return not os.path.isdir(value)


def scrub_paths(text: str) -> str:
    """Replace absolute local paths inside `text` with `<local>`: the card is public."""
    return _ABS_PATH.sub(LOCAL, text)


def _scrub_obj(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {scrub_paths(str(k)): _scrub_obj(v) for k, v in obj.items() if v is not None}
    if isinstance(obj, (list, tuple)):
        return [_scrub_obj(v) for v in obj]
    if isinstance(obj, str):
        return scrub_paths(obj)
    return obj


def _hub_datasets(config: dict) -> list[str]:
    """Hub ids of the stage's train/eval sources (local files and the embedded world are not
    datasets anyone else can find)."""
    data = config.get("data") if isinstance(config, dict) else None
    if not isinstance(data, dict):
        return []
    found: list[str] = []
    for split in ("train", "eval"):
        sources = data.get(split) or []
        if not isinstance(sources, list):
            sources = [sources]
        for source in sources:
            hub = None
            if isinstance(source, dict):
                hub = source.get("hub")
            elif isinstance(source, str) and source.startswith("hub:"):
                hub = source.split(":", 1)[1]
            if isinstance(hub, str) and hub.strip() and not re.search(r"\s", hub.strip()):
                found.append(hub.strip())
    return list(dict.fromkeys(found))


def _flatten(metrics: dict, prefix: str = "") -> list[tuple[str, Any]]:
    rows: list[tuple[str, Any]] = []
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            rows += _flatten(value, f"{name}.")
        else:
            rows.append((name, value))
    return rows


def _fmt(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return "n/a" if math.isnan(value) else f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return json.dumps(value, default=str)
    return str(value)


def _metrics_table(metrics: dict) -> str:
    rows = _flatten(metrics or {})
    if not rows:
        return "No metrics were recorded for this stage."
    lines = ["| metric | value |", "|---|---|"]
    for name, value in rows:
        cell = scrub_paths(_fmt(value)).replace("|", "\\|").replace("\n", " ")
        label = scrub_paths(name).replace("|", "\\|")
        lines.append(f"| {label} | {cell} |")
    return "\n".join(lines)


def _has_tokenizer(artifact: Artifact) -> bool:
    model = artifact.manifest.model
    model_dir = artifact.path / model.path if model is not None else None
    return model_dir is not None and any((model_dir / n).is_file() for n in TOKENIZER_FILES)


def _adapter_on_root(artifact: Artifact) -> bool:
    """True when the adapter applies directly to the lineage root (not to the local weights of an
    upstream full fine-tune, which a reader would not have)."""
    model = artifact.manifest.model
    return bool(model and (not model.base or model.base == model.root))


def _usage(artifact: Artifact, repo_id: str) -> str:
    model = artifact.manifest.model
    reward = model.task == "sequence-classification"
    auto = "AutoModelForSequenceClassification" if reward else "AutoModelForCausalLM"
    tokenizer = (f'tokenizer = AutoTokenizer.from_pretrained("{repo_id}")'
                 if _has_tokenizer(artifact) else None)
    if model.type == "adapter" and looks_like_hub_id(model.root) and _adapter_on_root(artifact):
        peft_auto = "AutoPeftModelForSequenceClassification" if reward else "AutoPeftModelForCausalLM"
        lines = [f"from peft import {peft_auto}"]
        if tokenizer:
            lines.append("from transformers import AutoTokenizer")
        lines.append(f'model = {peft_auto}.from_pretrained("{repo_id}")')
    elif model.type == "adapter":
        lines = ["from peft import PeftModel",
                 f"from transformers import {auto}" + (", AutoTokenizer" if tokenizer else ""),
                 f'base = {auto}.from_pretrained("<the base model: see Lineage>")',
                 f'model = PeftModel.from_pretrained(base, "{repo_id}")']
    else:
        lines = [f"from transformers import {auto}" + (", AutoTokenizer" if tokenizer else ""),
                 f'model = {auto}.from_pretrained("{repo_id}")']
    if tokenizer:
        lines.append(tokenizer)
    return "```python\n" + "\n".join(lines) + "\n```"


def upstream_stages(artifact: Artifact) -> tuple[list[str], list[str]]:
    """(the chain of model stages this model descends from, oldest first; the data-only stages
    that fed it). Upstream artifacts are read from beside this one, as a run directory holds
    them; the chain stops where one is missing."""
    chain, data = [], []
    current = artifact.manifest
    while current is not None:
        parent = None
        for name in current.inputs:
            upstream = read_manifest(artifact.path.parent / name)
            if upstream is None:
                continue
            if upstream.model is None:
                data.append(name)
            elif parent is None:
                parent = upstream
        if parent is not None:
            chain.append(parent.name)
        current = parent
    return chain[::-1], list(dict.fromkeys(data))


def model_card(artifact: Artifact, repo_id: str, run_report: str | None = None,
               merged: bool = False) -> str:
    """README.md for the repo: Hub metadata, what the model is, its recipe, metrics, usage."""
    manifest = artifact.manifest
    model = manifest.model
    if model is None:
        upload_plan(artifact)  # raises the "holds no model" error
    adapter = model.type == "adapter"
    root_on_hub = looks_like_hub_id(model.root)
    reward = model.task == "sequence-classification"

    tags = ["align", manifest.kind, "trl"]
    if model.method in ("lora", "qlora"):
        tags.append(model.method)
    meta: dict[str, Any] = {}
    if root_on_hub:
        meta["base_model"] = model.root
    meta["library_name"] = "peft" if adapter else "transformers"
    meta["pipeline_tag"] = "text-classification" if reward else "text-generation"
    meta["tags"] = list(dict.fromkeys(tags))
    datasets = _hub_datasets(manifest.config or {})
    if datasets:
        meta["datasets"] = datasets
    front = yaml.safe_dump(meta, sort_keys=False, default_flow_style=False, allow_unicode=True)

    method = METHOD_TEXT.get(model.method, model.method)
    kind = KINDS[manifest.kind].card if manifest.kind in KINDS else manifest.kind
    root = model.root or "unknown"
    root_text = (f"[`{root}`](https://huggingface.co/{root})" if root_on_hub
                 else f"`{scrub_paths(root)}` (a local model)")
    what = "reward model" if reward else "model"
    if adapter:
        for_what = " (a reward model)" if reward else ""
        summary = (f"A {method}{for_what} for {root_text}, trained by the `{manifest.kind}` stage "
                   f"({kind}) of an align recipe.")
    else:
        summary = (f"A {what} fine-tuned from {root_text} ({method}) by the `{manifest.kind}` "
                   f"stage ({kind}) of an align recipe.")
    if merged:
        summary += (" The adapter chain is merged into these full weights (`align push --merged`, "
                    "as `align export` writes them): plain `transformers` loads it.")
    out = [f"---\n{front}---", "", f"# {repo_id.split('/')[-1]}", "", summary]
    if not root_on_hub:
        out += ["", f"The lineage started from a local model (`{scrub_paths(root)}`), not a Hub "
                "repository, so this card sets no `base_model` metadata."]
    models, data = upstream_stages(artifact)
    lineage = [f"`{scrub_paths(root)}`", *[f"`{name}`" for name in models],
               f"**`{manifest.name}`** (this repo)"]
    out += ["", "## Lineage", "", " → ".join(dict.fromkeys(lineage))]
    if data:
        out += ["", "Trained on data made by " + ", ".join(f"`{name}`" for name in data) + "."]
    out += ["",
            f"- stage: `{manifest.name}`, kind `{manifest.kind}`",
            f"- method: `{model.method}` ({method})",
            f"- task: `{model.task}`",
            f"- config hash: `{manifest.config_hash}`"]
    if adapter and not _adapter_on_root(artifact):
        out.append(f"- this adapter applies to the weights of the upstream stage "
                   f"(`{scrub_paths(model.base or '')}`), a fine-tune of `{scrub_paths(root)}`; "
                   "load those weights as the base.")
    versions = {k: v for k, v in (manifest.versions or {}).items() if k != "python"}
    if versions:
        out.append("- trained with: " + ", ".join(f"{k} {v}" for k, v in versions.items()))

    config = _scrub_obj(json.loads(json.dumps(manifest.config or {}, default=str)))
    recipe = yaml.safe_dump(config, sort_keys=False, default_flow_style=False,
                            allow_unicode=True).rstrip()
    out += ["", "## Recipe", "",
            "The stage's resolved recipe block (unset keys omitted, local paths shown as "
            f"`{LOCAL}`):", "", "```yaml", recipe, "```",
            "", "## Metrics", "", _metrics_table(manifest.metrics)]
    if run_report:
        out += ["", "## Honesty", "",
                "Answer accuracy on questions the model should know, against hallucination and "
                "refusal on questions it cannot know:", "", scrub_paths(run_report.strip())]
    out += ["", "## Use it", "", _usage(artifact, repo_id), ""]
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------
# Pushing


def _scrub(text: str, token: str | None) -> str:
    """Remove the token (and anything shaped like a credential) from text shown to anyone."""
    text = str(text)
    if token:
        text = text.replace(token, "<token>")
    text = re.sub(r"(?i)(bearer\s+)[^\s'\"]+", r"\1<token>", text)
    return re.sub(r"\bhf_[A-Za-z0-9]{20,}\b", "<token>", text)


def _one_paragraph(text: str) -> str:
    return " ".join(str(text).split())


def _resolve_token(token: str | None) -> str:
    for candidate in (token, os.environ.get("HF_TOKEN")):
        if candidate and candidate.strip():
            return candidate.strip()
    import huggingface_hub

    try:
        saved = huggingface_hub.get_token()
    except Exception:  # a broken OIDC/Colab lookup is the same as no login for us
        saved = None
    if saved and saved.strip():
        return saved.strip()
    raise AlignError("pushing to the Hub needs a token with write access and none was found: "
                     "set HF_TOKEN, or run `hf auth login` once (tokens are created at "
                     "https://huggingface.co/settings/tokens).")


def _file_content(local: Path, repo_path: str, artifact: Artifact) -> Path | bytes:
    """The file as uploaded: unchanged, except local paths where libraries record a model's
    origin (e.g. an adapter's `base_model_name_or_path`)."""
    if repo_path not in _LOCATION_FILES:
        return local
    try:
        data = json.loads(local.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return local
    if not isinstance(data, dict):
        return local
    model = artifact.manifest.model
    changed = False
    for key in _LOCATION_KEYS:
        value = data.get(key)
        if not isinstance(value, str) or looks_like_hub_id(value):
            continue
        new = value
        if key == "base_model_name_or_path" and looks_like_hub_id(model.root) \
                and _adapter_on_root(artifact):
            new = model.root  # so AutoPeftModel finds the base on the Hub
        elif _WHOLE_ABS_PATH.match(value):
            new = LOCAL
        if new != value:
            data[key], changed = new, True
    return (json.dumps(data, indent=2, ensure_ascii=False) + "\n").encode() if changed else local


def _http_error(err: Exception, status: int | None, what: str, repo_id: str, revision: str | None,
                retries: int, token: str) -> AlignError:
    server = getattr(err, "server_message", None)
    detail = f" The Hub said: {_one_paragraph(server)}" if server and server.strip() else ""
    untouched = " No commit was made and the local artifact is unchanged."
    owner = repo_id.split("/")[0]
    if status == 401:
        msg = (f"the Hub rejected the token while {what} {repo_id} (HTTP 401): it is invalid, "
               "expired or revoked. Create a token with write access at "
               "https://huggingface.co/settings/tokens, then set HF_TOKEN or run `hf auth login`."
               + untouched)
    elif status == 403:
        msg = (f"no write access to {repo_id} (HTTP 403 while {what} it): the repo or the "
               f"namespace '{owner}' belongs to another user or to an organisation this token "
               "cannot write to, or the token is read-only. Push to a repo under your own "
               "namespace, or use a token with write access to it." + untouched + detail)
    elif status == 404:
        where = f"branch '{revision}' of {repo_id}" if revision else repo_id
        msg = (f"the Hub could not find {where} while {what} it (HTTP 404); check the repo id and "
               "that the token can see it." + untouched + detail)
    elif status == 429:
        msg = (f"the Hub kept rate-limiting the push to {repo_id} (HTTP 429) after {retries} "
               "retries; wait a few minutes and push again." + untouched)
    elif status is not None and status >= 500:
        msg = (f"the Hub had a server error (HTTP {status}) while {what} {repo_id}, still after "
               f"{retries} retries; try again later." + untouched + detail)
    else:
        msg = (f"the Hub refused {what} {repo_id} (HTTP {status})." + untouched + detail)
    return AlignError(_one_paragraph(_scrub(msg, token)))


def _network_error(err: Exception, what: str, repo_id: str, endpoint: str, token: str) -> AlignError:
    if type(err).__name__ == "OfflineModeIsEnabled":
        msg = ("HF_HUB_OFFLINE is set, so huggingface_hub makes no network requests; unset it to "
               f"push to {repo_id}.")
    else:
        env = os.environ.get("HF_ENDPOINT")
        hint = (f" HF_ENDPOINT is set to {env}: check it, or unset it to use huggingface.co."
                if env else " Check your network connection (and proxy settings).")
        reason = _one_paragraph(str(err)) or type(err).__name__
        msg = (f"the Hub could not be reached at {endpoint} while {what} {repo_id} ({reason})."
               + hint + " No commit was made and the local artifact is unchanged.")
    return AlignError(_one_paragraph(_scrub(msg, token)))


def _transport_errors() -> tuple[type[BaseException], ...]:
    """The HTTP client's connection errors (httpx2 in huggingface_hub 2.x, httpx in 1.x)."""
    import importlib

    found: list[type[BaseException]] = [ConnectionError, TimeoutError]
    for name in ("httpx2", "httpx"):
        try:
            found.append(importlib.import_module(name).TransportError)
        except (ImportError, AttributeError):
            pass
    return tuple(found)


def _retry_after(err: Exception) -> float | None:
    response = getattr(err, "response", None)
    value = response.headers.get("Retry-After") if response is not None else None
    return float(value) if value and value.strip().isdigit() else None


def push_artifact(artifact_path: str | Path, repo_id: str, *, private: bool = False,
                  revision: str | None = None, commit_message: str | None = None,
                  dry_run: bool = False, token: str | None = None, max_retries: int = 4,
                  retry_delay: float = 2.0, run_report: str | None = None,
                  endpoint: str | None = None, merged: bool = False) -> PushResult:
    """Upload an artifact's model and a model card to `repo_id` in one commit.

    Rate limits (429) and server errors (5xx) are retried with exponential backoff starting at
    `retry_delay` seconds; everything else fails at once as an `AlignError`. `merged` uploads
    `align export`'s standalone model (the adapter chain merged) instead. `dry_run` touches
    neither the network nor the token. The endpoint is `endpoint`, else HF_ENDPOINT read now (not
    at import, so a process can be pointed elsewhere), else huggingface_hub's default.
    """
    artifact = load_artifact(artifact_path)
    check_repo_id(repo_id)
    if revision is not None and (not revision.strip() or revision != revision.strip()):
        raise AlignError(f"'{revision}' is not a branch name.")
    if merged:
        was_adapter = artifact.manifest.model is not None and artifact.manifest.model.type == "adapter"
        artifact, plan = _merged_export(artifact)
    else:
        _refuse_chained_adapter(artifact)
        plan = upload_plan(artifact)
    card = model_card(artifact, repo_id, run_report, merged=merged and was_adapter)
    files = [repo for _, repo in plan] + ["README.md"]
    sizes = {repo: local.stat().st_size for local, repo in plan}
    sizes["README.md"] = len(card.encode())
    result = PushResult(repo_id=repo_id, revision=revision, files=files, commit_url=None,
                        card=card, sizes=sizes, dry_run=dry_run)
    if dry_run:
        return result

    secret = _resolve_token(token)
    from huggingface_hub import CommitOperationAdd, HfApi, constants
    from huggingface_hub.errors import HfHubHTTPError

    endpoint = (endpoint or os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")
    api = HfApi(endpoint=endpoint, token=secret, library_name="align",
                library_version=_align_version())
    transport = _transport_errors()

    def call(what: str, fn: Callable[[], Any]) -> Any:
        attempt = 0
        while True:
            try:
                return fn()
            except HfHubHTTPError as err:
                status = err.response.status_code if err.response is not None else None
                if status in RETRY_STATUS and attempt < max_retries:
                    delay = min(retry_delay * 2 ** attempt, MAX_BACKOFF_S)
                    if status == 429 and (hint := _retry_after(err)) is not None:
                        delay = min(max(delay, hint), MAX_BACKOFF_S)
                    time.sleep(delay)
                    attempt += 1
                    result.retries += 1
                    continue
                raise _http_error(err, status, what, repo_id, revision, attempt, secret) from None
            except ValueError as err:  # e.g. the Hub refused the card's metadata
                raise AlignError(_one_paragraph(_scrub(
                    f"the push to {repo_id} failed while {what} it: {err} No commit was made and "
                    "the local artifact is unchanged.", secret))) from None
            except transport as err:
                raise _network_error(err, what, repo_id, endpoint, secret) from None

    call("creating", lambda: api.create_repo(repo_id, private=private, exist_ok=True))
    if revision and revision != constants.DEFAULT_REVISION:
        call(f"creating branch '{revision}' in",
             lambda: api.create_branch(repo_id, branch=revision, exist_ok=True))

    message = commit_message or (f"align: {artifact.manifest.kind} stage "
                                 f"'{artifact.manifest.name}' ({artifact.manifest.model.method})")

    def commit():
        # Fresh operations per attempt: huggingface_hub mutates them and refuses reuse.
        ops = [CommitOperationAdd(path_in_repo=repo, path_or_fileobj=_file_content(local, repo, artifact))
               for local, repo in plan]
        ops.append(CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=card.encode()))
        return api.create_commit(
            repo_id, ops, commit_message=message, revision=revision,
            commit_description=f"Artifact '{artifact.manifest.name}', config hash "
                               f"{artifact.manifest.config_hash}, pushed by align.")

    info = call("uploading to", commit)
    result.commit_url = _scrub(str(getattr(info, "commit_url", "") or ""), secret) or None
    return result


def _align_version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("align")
    except PackageNotFoundError:
        return None


def format_plan(result: PushResult) -> str:
    """Human-readable plan for `align push --dry-run`: the files with sizes, then the card."""
    where = result.repo_id + (f"@{result.revision}" if result.revision else "")
    head = "would upload to" if result.dry_run or not result.commit_url else "uploaded to"
    width = max((len(f) for f in result.files), default=0)
    lines = [f"{head} {where} ({len(result.files)} files, one commit):"]
    total = 0
    for name in result.files:
        size = result.sizes.get(name)
        total += size or 0
        lines.append(f"  {name.ljust(width)}  {_human(size) if size is not None else '?':>10}")
    lines.append(f"  {'total'.ljust(width)}  {_human(total):>10}")
    if result.commit_url:
        lines.append(f"commit: {result.commit_url}")
    lines += ["", "README.md:", "", result.card]
    return "\n".join(lines)


def _human(size: int) -> str:
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"
