"""Reward sources: where an RL stage's scores come from, for PPO, GRPO and RLOO alike.

Sources: the reward model of an upstream `rm` stage (its scalar at the last real token), a
Python callable named `module:function` (rule-based or verifiable rewards, `args` bound as
keyword arguments), the ternary honesty reward (`honesty`, graded by the project's judge), and
weighted sums of these. A value that is not finite (a callable returned None or nan, a reward
model overflowed) is counted per source and reported; PPO leaves such a row out of its update,
GRPO and RLOO (align.rewards.trl) hand it to TRL as None, which TRL leaves out of the sum.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch

from align.errors import AlignError
from align.honesty.reward import TernaryReward
from align.importing import import_object
from align.modeling import load_start_model, load_tokenizer
from align.rewards.spec import RewardSpec, parse_rewards, unique_names

# --------------------------------------------------------------------------------------------
# Scalar heads on causal backbones (reward model and value model share them)
# --------------------------------------------------------------------------------------------


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that skip left padding, so a padded row sees the same positions as unpadded."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def classifier_parts(model):
    """(backbone, scalar head) of a sequence-classification model, PEFT-wrapped or not.

    The head is applied per token by hand: transformers' own pooling picks the last token that
    is not the pad id, which is wrong when pad == eos, and values are needed at every token.
    """
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    backbone = getattr(inner, inner.base_model_prefix, None)
    head = getattr(inner, "score", None)
    if head is None:
        head = getattr(inner, "classifier", None)
    if backbone is None or head is None:
        raise AlignError(f"{type(inner).__name__} is not a causal backbone with a scalar head "
                         "(expected `<base_model_prefix>` and `score` modules).")
    return backbone, head


def hidden_states(backbone, input_ids, attention_mask) -> torch.Tensor:
    out = backbone(input_ids=input_ids, attention_mask=attention_mask,
                   position_ids=position_ids_from_mask(attention_mask), use_cache=False)
    return out.last_hidden_state


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the rightmost attended position of each row (left and right padding allowed)."""
    width = attention_mask.shape[1]
    return width - 1 - attention_mask.long().flip(-1).argmax(-1)


@torch.no_grad()
def sequence_scores(model, input_ids, attention_mask) -> torch.Tensor:
    """The reward model's scalar at each row's last real token, float32, shape (B,)."""
    backbone, head = classifier_parts(model)
    hidden = hidden_states(backbone, input_ids, attention_mask)
    rows = torch.arange(hidden.shape[0], device=hidden.device)
    last = hidden[rows, last_token_index(attention_mask)]
    return head(last).squeeze(-1).float()


# --------------------------------------------------------------------------------------------
# Reward sources
# --------------------------------------------------------------------------------------------


@dataclass
class Episodes:
    """What a reward source may look at for one rollout (this process's rows only)."""

    prompts: list[list[dict]]          # prompt messages
    completions: list[str]             # decoded responses, without special tokens
    columns: dict[str, list[Any]]      # other dataset columns, one value per row
    query_responses: torch.Tensor | None = None  # policy token ids (B, P+R), for same-tokenizer RMs
    attention_mask: torch.Tensor | None = None
    has_eos: torch.Tensor | None = None          # (B,) the completion's last token is EOS


class RewardModelSource:
    """Scores with an upstream RM artifact.

    When the RM's tokenizer is the policy's (same vocabulary and chat template, the usual case
    as both come from the SFT model) the policy's own token ids are scored: no second
    tokenisation, and a completion cut off by response_length stays visibly unfinished. A
    completion that ended with EOS gets the tokens the chat template writes after an assistant
    turn's EOS (e.g. a newline), so the RM sees exactly the rendering it was trained on.
    Otherwise every prompt + completion is re-rendered with the RM's own chat template.
    """

    name = "rm"

    def __init__(self, model, tokenizer, *, policy_tokenizer=None, normalize_with: tuple[float, float] | None = None,
                 batch_size: int | None = None, max_length: int | None = None):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.same_tokenizer = policy_tokenizer is not None and same_tokenizer(tokenizer, policy_tokenizer)
        self.turn_suffix = turn_suffix_ids(tokenizer) if self.same_tokenizer else None
        if self.turn_suffix is None:
            self.same_tokenizer = False  # cannot tell how a turn ends: render every row instead
        self.normalize_with = normalize_with
        self.batch_size = batch_size
        self.max_length = max_length

    @classmethod
    def from_artifact(cls, artifact, *, policy_tokenizer, device, dtype=None, normalize: bool = False,
                      batch_size: int | None = None, trust_remote_code: bool = False):
        ref = artifact.manifest.model
        if ref is None or ref.task != "sequence-classification":
            raise AlignError(f"artifact '{artifact.name}' ({artifact.path}) holds no reward model "
                             "(a sequence-classification model); name an `rm` stage in `from`.")
        stats = None
        if normalize:
            metrics = artifact.manifest.metrics
            mean, std = metrics.get("score_mean"), metrics.get("score_std")
            if not _finite_number(mean) or not _finite_number(std) or std <= 0:
                raise AlignError(f"score_normalization rm_stats needs the RM artifact's held-out "
                                 f"score statistics, but '{artifact.name}' has score_mean={mean!r}, "
                                 f"score_std={std!r} in {artifact.path / 'artifact.json'}. Use "
                                 "score_normalization: running (or none) instead.")
            stats = (float(mean), float(std))
        model = load_start_model(artifact, task="sequence-classification", dtype=dtype,
                                 trust_remote_code=trust_remote_code)
        tokenizer = load_tokenizer(artifact.tokenizer_path(), trust_remote_code)
        model.requires_grad_(False)
        return cls(model.to(device), tokenizer, policy_tokenizer=policy_tokenizer,
                   normalize_with=stats, batch_size=batch_size)

    @torch.no_grad()
    def __call__(self, episodes: Episodes) -> torch.Tensor:
        if self.same_tokenizer and episodes.query_responses is not None:
            ids, mask = append_after_eos(episodes.query_responses, episodes.attention_mask,
                                         episodes.has_eos, self.turn_suffix, self.tokenizer.pad_token_id)
        else:
            ids, mask = self._retokenize(episodes.prompts, episodes.completions)
        device = next(self.model.parameters()).device
        ids, mask = ids.to(device), mask.to(device)
        step = self.batch_size or ids.shape[0]
        scores = torch.cat([sequence_scores(self.model, ids[i:i + step], mask[i:i + step])
                            for i in range(0, ids.shape[0], step)])
        return scores.double().cpu()

    def normalize(self, scores: torch.Tensor) -> torch.Tensor:
        """`rm_stats`: in units of the RM's held-out score spread, centred on its mean."""
        mean, std = self.normalize_with
        return (scores - mean) / std

    def _retokenize(self, prompts, completions):
        tok = self.tokenizer
        texts = []
        for prompt, completion in zip(prompts, completions):
            messages = [*prompt, {"role": "assistant", "content": completion}]
            if tok.chat_template:
                texts.append(tok.apply_chat_template(messages, tokenize=False))
            else:
                texts.append("\n".join(m["content"] for m in messages))
        side = tok.padding_side
        tok.padding_side = "right"
        try:
            enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=not tok.chat_template,
                      truncation=self.max_length is not None, max_length=self.max_length)
        finally:
            tok.padding_side = side
        return enc["input_ids"], enc["attention_mask"]


def turn_suffix_ids(tokenizer) -> list[int] | None:
    """Token ids a chat template writes after the EOS that closes an assistant turn ([] if
    none); None when the template does not render a turn as prompt + content + EOS + suffix."""
    if not tokenizer.chat_template:
        return [] if tokenizer.eos_token else None
    eos = tokenizer.eos_token
    marker = "\u2063content\u2063"
    try:
        prompt = tokenizer.apply_chat_template([{"role": "user", "content": "q"}], tokenize=False,
                                               add_generation_prompt=True)
        full = tokenizer.apply_chat_template([{"role": "user", "content": "q"},
                                              {"role": "assistant", "content": marker}], tokenize=False)
    except Exception:  # templates may refuse such probes; re-rendering is always correct
        return None
    if not eos or not full.startswith(prompt) or (marker + eos) not in full:
        return None
    suffix = full.split(marker + eos, 1)[1]
    return tokenizer(suffix, add_special_tokens=False)["input_ids"] if suffix else []


def append_after_eos(ids: torch.Tensor, mask: torch.Tensor, has_eos: torch.Tensor | None,
                     suffix: list[int], pad_id: int):
    """Right after each finished row's last real token, the template's turn suffix."""
    if not suffix or has_eos is None or not bool(has_eos.any()):
        return ids, mask
    n = len(suffix)
    ids = torch.cat([ids, ids.new_full((ids.shape[0], n), pad_id)], dim=1)
    mask = torch.cat([mask, mask.new_zeros((mask.shape[0], n))], dim=1)
    last = last_token_index(mask)
    extra = torch.tensor(suffix, dtype=ids.dtype, device=ids.device)
    for row in torch.nonzero(has_eos.to(ids.device)).flatten().tolist():
        start = int(last[row]) + 1
        ids[row, start:start + n] = extra
        mask[row, start:start + n] = 1
    return ids, mask


def same_tokenizer(a, b) -> bool:
    return (a.get_vocab() == b.get_vocab() and (a.chat_template or "") == (b.chat_template or "")
            and a.all_special_tokens == b.all_special_tokens)


class CallableSource:
    """A user function `fn(prompts, completions, **columns) -> list[float]`.

    `prompts` are the prompt message lists, `completions` the decoded completions (strings),
    and every other column of the stage's data comes as a keyword argument holding one value
    per row, so a verifiable reward can compare against e.g. `answers`. None means "no score"
    and, like nan, is counted as non-finite. `args` are bound as keyword arguments. A function
    with a `metrics()` method (the honesty reward) has its figures logged after each call.
    """

    def __init__(self, spec: str, fn: Callable | None = None, args: dict | None = None,
                 name: str | None = None):
        self.name = name or spec
        self.spec = spec
        fn = fn or import_callable(spec)
        self.fn = functools.partial(fn, **args) if args else fn
        self.metrics = getattr(fn, "metrics", None)

    def __call__(self, episodes: Episodes) -> torch.Tensor:
        out = self.fn(episodes.prompts, episodes.completions, **episodes.columns)
        if isinstance(out, torch.Tensor):
            out = out.detach().reshape(-1).tolist()
        try:
            values = [math.nan if v is None else float(v) for v in out]
        except (TypeError, ValueError) as exc:
            raise AlignError(f"reward function '{self.spec}' must return a list of numbers (or None); "
                             f"got {type(out).__name__}: {exc}") from None
        if len(values) != len(episodes.completions):
            raise AlignError(f"reward function '{self.spec}' returned {len(values)} scores for "
                             f"{len(episodes.completions)} completions; it must return one per completion.")
        return torch.tensor(values, dtype=torch.float64)


def import_callable(spec: str) -> Callable:
    return import_object(spec, "reward source")


@dataclass
class ScoreBatch:
    """A rollout's scores: the weighted total, each source's part, and which rows are usable."""

    total: torch.Tensor                 # (B,) float64 weighted raw scores, 0 where not finite
    parts: dict[str, torch.Tensor]      # source name -> (B,) raw values
    finite: torch.Tensor                # (B,) bool
    # The weighted total with every RM part in rm_stats units (None without RM statistics).
    rm_normalized: torch.Tensor | None = None
    bad_rows: list[int] = field(default_factory=list)

    @property
    def non_finite(self) -> dict[str, int]:
        """Per source, how many of its values were not finite."""
        return {name: int((~torch.isfinite(v)).sum()) for name, v in self.parts.items()}


class WeightedReward:
    """The score of a rollout: sum of weight * source score over the configured sources."""

    def __init__(self, sources: Sequence[tuple[Callable[[Episodes], torch.Tensor], float]]):
        if not sources:
            raise AlignError("an RL stage needs at least one reward source.")
        self.sources = list(sources)

    def __call__(self, episodes: Episodes) -> ScoreBatch:
        n = len(episodes.completions)
        total = torch.zeros(n, dtype=torch.float64)
        normalized = torch.zeros(n, dtype=torch.float64)
        has_stats = False
        parts = {}
        for source, weight in self.sources:
            values = source(episodes).to(torch.float64).reshape(-1)
            if values.numel() != n:
                raise AlignError(f"reward source '{source.name}' gave {values.numel()} scores for {n} rows.")
            parts[_unique(source.name, parts)] = values
            total = total + weight * values
            if getattr(source, "normalize_with", None) is not None:
                has_stats = True
                values = source.normalize(values)
            normalized = normalized + weight * values
        finite = torch.isfinite(total)
        zero = torch.zeros_like(total)
        return ScoreBatch(total=torch.where(finite, total, zero), parts=parts, finite=finite,
                          rm_normalized=torch.where(finite, normalized, zero) if has_stats else None,
                          bad_rows=torch.nonzero(~finite).flatten().tolist())


def _unique(name: str, taken: dict) -> str:
    out, i = name, 2
    while out in taken:
        out, i = f"{name}#{i}", i + 1
    return out


def _finite_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def specs_of(config_or_items) -> list[RewardSpec]:
    """Reward specs from a config with `.rewards` (PPOConfig), a list of dicts, or of specs."""
    items = getattr(config_or_items, "rewards", config_or_items)
    if items and all(isinstance(i, RewardSpec) for i in items):
        return list(items)
    return parse_rewards(items)


def build_sources(specs: list[RewardSpec], *, rm_source: RewardModelSource | None = None,
                  where: str = "rewards") -> list[tuple[Callable[[Episodes], torch.Tensor], float]]:
    """(source, weight) for each spec; `rm` entries use `rm_source` (the stage loads it)."""
    out = []
    for i, (spec, name) in enumerate(zip(specs, unique_names(specs))):
        if spec.source == "rm":
            if rm_source is None:
                raise AlignError(f"{where}.{i}: source 'rm' needs a reward model: list an `rm` stage "
                                 "in this stage's `from`, or use a module:function reward.")
            out.append((rm_source, spec.weight))
        elif spec.source == "honesty":
            out.append((CallableSource("honesty", TernaryReward(**spec.args), name=name), spec.weight))
        else:
            out.append((CallableSource(spec.source, args=spec.args), spec.weight))
    return out


def build_reward(config, *, rm_source: RewardModelSource | None = None) -> WeightedReward:
    """The configured weighted sum (PPO): `config.rewards` or a list of reward entries."""
    return WeightedReward(build_sources(specs_of(config), rm_source=rm_source))


def check_callables(specs: list[RewardSpec], where: str) -> None:
    """Import every module:function source now: a typo should fail before any model loads."""
    for i, spec in enumerate(specs):
        if spec.source not in ("rm", "honesty"):
            try:
                import_callable(spec.source)
            except AlignError as exc:
                raise AlignError(f"{where}.{i}: {exc}") from None
        elif spec.source == "honesty":
            try:
                TernaryReward(**spec.args)
            except AlignError as exc:
                raise AlignError(f"{where}.{i}.args: {exc}") from None
