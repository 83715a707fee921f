"""The project's own PPO loop on accelerate, transformers and PEFT.

One training step is the algorithm, read top to bottom in `PPOTrainer.train_step`:

1. rollout — sample a completion for each prompt (batched `generate`, KV cache, left padding),
   keeping the logits each token was sampled from (the sampling policy's log-probs), then one
   no-grad pass for the value model's values, one for the reference's log-probs, and the reward
   sources' scores;
2. rewards — shape the score (normalise, clip, missing-EOS penalty) and put it on the last
   token; every token pays the KL penalty to the reference;
3. advantages — GAE over the response tokens, optionally whitened;
4. update — `ppo_epochs` passes of shuffled minibatches through the clipped policy and value
   losses, with gradient accumulation and DDP by accelerate;
5. bookkeeping — KL controller, statistics (`stats.jsonl`), samples, checkpoints.

Tensors are laid out as `[left-padded prompt | right-padded response]`; per-token tensors cover
the response only, with `mask` marking real response tokens (the first EOS included). Rows
whose score is not finite keep their place in the batch (every process must run the same
number of forwards under DDP) but their mask is all zero, so they contribute nothing.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
import torch
from torch import nn

from align.errors import AlignError, NonFiniteError
from align.ppo.config import PPOConfig
from align.ppo.core import (
    AdaptiveKLController,
    FixedKLController,
    clipped_policy_loss,
    clipped_value_loss,
    compute_gae,
    entropy_from_logits,
    explained_variance,
    kl_estimate,
    logprobs_from_logits,
    masked_whiten,
)
from align.ppo.rewards import ScoreShaper
from align.rewards.sources import (
    Episodes,
    ScoreBatch,
    WeightedReward,
    classifier_parts,
    position_ids_from_mask,
)

STATE_FILE = "trainer_state.json"  # written last: its presence marks a complete checkpoint
WEIGHTS_FILE = "trainable.safetensors"


class ActorCritic(nn.Module):
    """Policy and value model behind one forward, so DDP wraps one module and one backward
    updates both."""

    def __init__(self, policy: nn.Module, value_model: nn.Module):
        super().__init__()
        self.policy = policy
        self.value_model = value_model

    def forward(self, input_ids, attention_mask, context_length: int):
        positions = position_ids_from_mask(attention_mask)
        n_response = input_ids.shape[1] - context_length
        # logits_to_keep: the LM head runs on the response positions only, not the prompt.
        logits = self.policy(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions,
                             logits_to_keep=n_response + 1, use_cache=False).logits[:, :-1]
        return logits, self.values(input_ids, attention_mask, context_length, positions)

    def values(self, input_ids, attention_mask, context_length: int, positions=None):
        """The value model alone: the value of the state *before* each response token is emitted."""
        if positions is None:
            positions = position_ids_from_mask(attention_mask)
        backbone, head = classifier_parts(self.value_model)
        hidden = backbone(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions,
                          use_cache=False).last_hidden_state
        return head(hidden[:, context_length - 1:-1]).squeeze(-1).float()


@dataclass
class Rollout:
    """One batch of episodes on this process and everything the update needs from them."""

    prompt_rows: list[int]          # indices into the prompt dataset
    query_responses: torch.Tensor   # (B, P + R) token ids
    attention_mask: torch.Tensor    # (B, P + R)
    context_length: int             # P
    responses: torch.Tensor         # (B, R)
    mask: torch.Tensor              # (B, R) bool: real response tokens of rows with a finite score
    response_mask: torch.Tensor     # (B, R) bool: real response tokens of every row
    has_eos: torch.Tensor           # (B,) bool
    logprobs: torch.Tensor          # (B, R) sampling policy, at the sampling temperature
    ref_logprobs: torch.Tensor      # (B, R) reference
    values: torch.Tensor            # (B, R)
    entropy: torch.Tensor           # (B, R)
    completions: list[str]
    prompts: list[list[dict]]
    scores: ScoreBatch
    shaped_scores: torch.Tensor | None = None  # (B,)
    kl: torch.Tensor | None = None             # (B, R) per-token estimate
    rewards: torch.Tensor | None = None        # (B, R)
    advantages: torch.Tensor | None = None
    returns: torch.Tensor | None = None


def is_peft(model) -> bool:
    return hasattr(model, "disable_adapter") and hasattr(model, "peft_config")


def disable_dropout(model: nn.Module) -> None:
    """Dropout would make the first ratio differ from 1 and the reference log-probs noisy."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0


class PPOTrainer:
    """PPO on a causal-LM policy, a value model with a scalar head, and reward sources.

    `ref_policy=None` requires a PEFT policy: the reference is then the same model with the
    adapter disabled, which costs no memory. `prompts` are rows `{"prompt": messages, ...}`;
    their other columns reach reward callables as keyword arguments.
    """

    def __init__(self, config: PPOConfig, *, policy, value_model, tokenizer, reward: WeightedReward,
                 prompts: list[dict], ref_policy=None, output_dir: str | Path | None = None,
                 accelerator=None, seed: int = 0, log_prefix: str = ""):
        from accelerate import Accelerator

        if ref_policy is None and not is_peft(policy):
            raise AlignError("PPO needs a reference model: pass ref_policy, or a PEFT policy whose "
                             "adapter can be disabled.")
        if not prompts:
            raise AlignError("PPO has no prompts to train on.")
        self.config = config
        self.seed = config.seed if config.seed is not None else seed
        self.accelerator = accelerator or Accelerator(gradient_accumulation_steps=config.gradient_accumulation_steps)
        self.accelerator.gradient_accumulation_steps = config.gradient_accumulation_steps
        self.tokenizer = tokenizer
        self.reward = reward
        self.prompts = prompts
        self.output_dir = Path(output_dir) if output_dir else None
        self.log_prefix = log_prefix
        self.device = self.accelerator.device

        for model in (policy, value_model):
            disable_dropout(model)
            if config.gradient_checkpointing:
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if ref_policy is not None:
            disable_dropout(ref_policy)
            ref_policy.requires_grad_(False)
            self.ref_policy = ref_policy.to(self.device).eval()
        else:
            self.ref_policy = None

        actor_critic = ActorCritic(policy, value_model)
        params = [p for p in actor_critic.parameters() if p.requires_grad]
        if not params:
            raise AlignError("PPO found no trainable parameters in the policy and value model.")
        self.model, self.optimizer = self.accelerator.prepare(actor_critic, _adamw(params, config))

        if config.adaptive_kl:
            self.kl_ctl = AdaptiveKLController(config.kl_coef, config.kl_target, config.kl_horizon)
        else:
            self.kl_ctl = FixedKLController(config.kl_coef)
        self.shaper = ScoreShaper(config.score_normalization, config.score_clip, config.missing_eos_penalty)

        self.num_processes = self.accelerator.num_processes
        self.episodes_per_step = config.batch_size * self.num_processes
        total = config.total_episodes or len(prompts)
        self.total_steps = max(1, math.ceil(total / self.episodes_per_step))
        self.eos_ids = self._eos_ids(policy)
        self.prompt_ids = [self._encode_prompt(row["prompt"]) for row in prompts]
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer.optimizer, self._lr_factor)
        self.step = 0
        self.history: list[dict] = []

    # -------------------------------------------------------------------------------------------
    # the loop
    # -------------------------------------------------------------------------------------------

    def train(self, resume_from: str | Path | None = None) -> list[dict]:
        from tqdm.auto import tqdm

        if resume_from:
            self.load_checkpoint(resume_from)
        elif self.output_dir is not None and self.accelerator.is_main_process:
            for name in ("stats.jsonl", "samples.jsonl"):  # left by an attempt that saved no checkpoint
                (self.output_dir / name).unlink(missing_ok=True)
        bar = tqdm(total=self.total_steps * self.episodes_per_step, initial=self.step * self.episodes_per_step,
                   unit="episode", desc="ppo", dynamic_ncols=True,
                   disable=self.config.disable_tqdm or not self.accelerator.is_main_process)
        try:
            while self.step < self.total_steps:
                stats = self.train_step()
                stop_if_not_finite(stats, self.step, self.output_dir)
                bar.update(self.episodes_per_step)
                bar.set_postfix(score=f"{stats['score_raw']:.3f}", kl=f"{stats['kl']:.3f}")
                if self.step % self.config.save_steps == 0 and self.step < self.total_steps:
                    self.save_checkpoint()
        finally:
            bar.close()
        return self.history

    def train_step(self) -> dict:
        started = time.perf_counter()
        rows = self.next_prompt_rows()
        rollout = self.rollout(rows)              # 1. sample, score, log-probs, values
        self.shape_rewards(rollout)               # 2. score on the last token, KL on every token
        self.compute_advantages(rollout)          # 3. GAE (+ whitening)
        rollout_seconds = time.perf_counter() - started
        update = self.update(rollout)             # 4. PPO epochs of minibatch updates
        stats = self.statistics(rollout, update)  # 5. bookkeeping
        self.kl_ctl.update(stats["kl"], self.episodes_per_step)
        self.step += 1
        elapsed = time.perf_counter() - started
        stats.update(step=self.step, episodes=self.step * self.episodes_per_step,
                     time_rollout_s=rollout_seconds, time_step_s=elapsed,
                     episodes_per_s=self.episodes_per_step / elapsed)
        self.history.append(stats)
        self.record(stats, rollout)
        return stats

    # -------------------------------------------------------------------------------------------
    # 1. rollout
    # -------------------------------------------------------------------------------------------

    def next_prompt_rows(self) -> list[int]:
        """This process's prompts for the current step: a seeded permutation per pass over the
        data, so a resumed run sees exactly the prompts the uninterrupted one would have."""
        n = len(self.prompts)
        first = self.step * self.episodes_per_step + self.accelerator.process_index * self.config.batch_size
        out = []
        for position in range(first, first + self.config.batch_size):
            epoch, offset = divmod(position, n)
            out.append(int(self._permutation(epoch)[offset]))
        return out

    def _permutation(self, epoch: int) -> torch.Tensor:
        cache = getattr(self, "_perm_cache", None)
        if cache is None or cache[0] != epoch:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perm_cache = cache = (epoch, torch.randperm(len(self.prompts), generator=generator))
        return cache[1]

    @torch.no_grad()
    def rollout(self, rows: list[int]) -> Rollout:
        policy = self.unwrapped.policy
        ids, prompt_mask = self._left_pad([self.prompt_ids[i] for i in rows])
        # Reseeded per step and process: sampling is reproducible, also across a resume.
        torch.manual_seed(self.seed * 7919 + self.step * self.num_processes + self.accelerator.process_index)
        policy.eval()
        out = policy.generate(input_ids=ids, attention_mask=prompt_mask,
                              generation_config=self._generation_config())
        context = ids.shape[1]
        responses, response_mask, has_eos = self._cut_at_eos(out.sequences[:, context:])
        query_responses = torch.cat([ids, responses], dim=1)
        attention_mask = torch.cat([prompt_mask, response_mask.long()], dim=1)

        # The sampling policy's log-probs and entropy come from the logits each token was sampled
        # from (generate returns them), so the policy needs no second pass over the rollout.
        logits = _tempered(torch.stack(out.logits[:responses.shape[1]], dim=1), self.config.temperature)
        logprobs, entropy = logprobs_from_logits(logits, responses), entropy_from_logits(logits)
        del logits, out
        values, ref_logprobs = self._score_tokens(query_responses, attention_mask, context, responses)
        completions = self._decode(responses, response_mask)
        prompts = [self.prompts[i]["prompt"] for i in rows]
        columns = {key: [self.prompts[i].get(key) for i in rows]
                   for key in self.prompts[rows[0]] if key != "prompt"}
        scores = self.reward(Episodes(prompts=prompts, completions=completions, columns=columns,
                                      query_responses=query_responses, attention_mask=attention_mask,
                                      has_eos=self._ends_with_eos(responses, response_mask)))
        mask = response_mask & scores.finite.to(self.device)[:, None]
        return Rollout(prompt_rows=rows, query_responses=query_responses, attention_mask=attention_mask,
                       context_length=context, responses=responses, mask=mask, response_mask=response_mask,
                       has_eos=has_eos, logprobs=logprobs, ref_logprobs=ref_logprobs, values=values,
                       entropy=entropy, completions=completions, prompts=prompts, scores=scores)

    def _score_tokens(self, query_responses, attention_mask, context, responses):
        """Values in one pass, reference log-probs in another, in chunks of
        rollout_forward_batch_size rows."""
        step = self.config.rollout_forward_batch_size or query_responses.shape[0]
        parts = []
        model = self.unwrapped
        model.eval()
        for start in range(0, query_responses.shape[0], step):
            rows = slice(start, start + step)
            ids, mask, labels = query_responses[rows], attention_mask[rows], responses[rows]
            values = model.values(ids, mask, context)
            ref_logits = _tempered(self._reference_logits(ids, mask, context), self.config.temperature)
            parts.append((values, logprobs_from_logits(ref_logits, labels)))
        return tuple(torch.cat(p) for p in zip(*parts))

    def _reference_logits(self, ids, mask, context):
        kwargs = dict(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask),
                      logits_to_keep=ids.shape[1] - context + 1, use_cache=False)
        if self.ref_policy is not None:
            return self.ref_policy(**kwargs).logits[:, :-1]
        policy = self.unwrapped.policy
        with policy.disable_adapter():
            return policy(**kwargs).logits[:, :-1]

    def _generation_config(self):
        from transformers import GenerationConfig

        c = self.config
        # Sampling processors are set to values that switch them off: generate() fills any field
        # left None from the model's generation_config (top_k=50 and repetition penalties are
        # common there), and the tokens would no longer be samples of the distribution whose
        # log-probs PPO trains on. min_p / min_new_tokens have no "off" value that costs nothing,
        # so they are only overridden when the model's own config sets them.
        config = GenerationConfig(
            max_new_tokens=c.response_length, do_sample=True, temperature=c.temperature, top_p=c.top_p,
            top_k=0, typical_p=1.0, epsilon_cutoff=0.0, eta_cutoff=0.0, repetition_penalty=1.0,
            no_repeat_ngram_size=0, min_length=0, num_beams=1, num_return_sequences=1, use_cache=True,
            pad_token_id=self.tokenizer.pad_token_id, eos_token_id=self.eos_ids if c.stop_at_eos else [],
            return_dict_in_generate=True, output_logits=True,  # the raw logits, before any processor
        )
        model_config = getattr(self.unwrapped.policy, "generation_config", None)
        if getattr(model_config, "min_p", None) is not None:
            config.min_p = 0.0
        if getattr(model_config, "min_new_tokens", None):
            config.min_new_tokens = 0
        return config

    def _cut_at_eos(self, generated: torch.Tensor):
        """Response tokens up to and including the first EOS (all of them without stop_at_eos);
        columns past the longest response are dropped so no later pass computes on padding.
        `has_eos`: the response contains an EOS (what the missing-EOS penalty asks)."""
        is_eos = torch.isin(generated, torch.tensor(self.eos_ids, device=generated.device))
        has_eos = is_eos.any(dim=1)
        positions = torch.arange(generated.shape[1], device=generated.device)
        stops = has_eos if self.config.stop_at_eos else torch.zeros_like(has_eos)
        first_eos = torch.where(stops, is_eos.float().argmax(dim=1), generated.shape[1] - 1)
        mask = positions[None, :] <= first_eos[:, None]
        width = int(mask.sum(dim=1).max())
        mask = mask[:, :width]
        responses = generated[:, :width].masked_fill(~mask, self.tokenizer.pad_token_id)
        return responses, mask, has_eos

    # -------------------------------------------------------------------------------------------
    # 2. rewards and 3. advantages
    # -------------------------------------------------------------------------------------------

    def shape_rewards(self, r: Rollout) -> None:
        """Per-token reward: -kl_coef * KL on every token, plus the shaped score on the last."""
        c = self.config
        r.shaped_scores = self.shaper(r.scores, r.has_eos.cpu())
        r.kl = torch.where(r.response_mask, kl_estimate(r.logprobs, r.ref_logprobs, c.kl_estimator),
                           torch.zeros_like(r.logprobs))
        rewards = -self.kl_ctl.value * r.kl
        last = r.response_mask.sum(dim=1) - 1
        rows = torch.arange(rewards.shape[0], device=rewards.device)
        rewards[rows, last] += r.shaped_scores.to(device=rewards.device, dtype=rewards.dtype)
        if c.whiten_rewards:
            rewards = masked_whiten(rewards, r.mask, shift_mean=False)
        r.rewards = torch.where(r.mask, rewards, torch.zeros_like(rewards))

    def compute_advantages(self, r: Rollout) -> None:
        c = self.config
        r.advantages, r.returns = compute_gae(r.rewards, r.values, r.mask, c.gamma, c.lam)
        if c.whiten_advantages:
            r.advantages = masked_whiten(r.advantages, r.mask)

    # -------------------------------------------------------------------------------------------
    # 4. update
    # -------------------------------------------------------------------------------------------

    def update(self, r: Rollout) -> dict:
        c = self.config
        acc = self.accelerator
        micro_size = c.mini_batch_size // c.gradient_accumulation_steps
        generator = torch.Generator().manual_seed(self.seed * 104_729 + self.step)
        totals: dict[str, torch.Tensor] = {}
        n_micro = 0
        self.model.train()
        for _ in range(c.ppo_epochs):
            order = torch.randperm(r.responses.shape[0], generator=generator)
            for start in range(0, len(order), c.mini_batch_size):
                for micro in order[start:start + c.mini_batch_size].split(micro_size):
                    with acc.accumulate(self.model):
                        loss, stats = self.loss(r, micro.to(self.device))
                        acc.backward(loss)
                        if acc.sync_gradients:
                            if c.max_grad_norm is not None:
                                stats["grad_norm"] = acc.clip_grad_norm_(self.model.parameters(), c.max_grad_norm)
                            self.optimizer.step()
                            self.scheduler.step()
                            self.optimizer.zero_grad()
                    for key, value in stats.items():
                        totals[key] = totals.get(key, 0.0) + value.detach().float()
                    n_micro += 1
        counts = {"grad_norm": max(1, n_micro // c.gradient_accumulation_steps)}
        return {key: (value / counts.get(key, n_micro)) for key, value in totals.items()}

    def loss(self, r: Rollout, rows: torch.Tensor):
        """Clipped policy loss + vf_coef * clipped value loss on some rows of the rollout,
        trimmed to the columns those rows use."""
        c = self.config
        ids, attention, context, width = self._trim(r, rows)
        logits, values = self.model(ids, attention, context)
        logprobs = logprobs_from_logits(_tempered(logits, c.temperature), r.responses[rows, :width])
        mask = r.mask[rows, :width]
        pg_loss, pg_stats = clipped_policy_loss(logprobs, r.logprobs[rows, :width], r.advantages[rows, :width],
                                                mask, c.cliprange)
        vf_loss, vf_stats = clipped_value_loss(values, r.values[rows, :width], r.returns[rows, :width], mask,
                                               c.cliprange_value)
        stats = {"policy_loss": pg_loss, "value_loss": vf_loss, **pg_stats, **vf_stats}
        return pg_loss + c.vf_coef * vf_loss, stats

    @staticmethod
    def _trim(r: Rollout, rows: torch.Tensor):
        """Drop prompt columns that are padding in every selected row, and response columns
        past their longest response."""
        attention = r.attention_mask[rows]
        used = attention.bool().any(dim=0)
        left = int(used[:r.context_length].float().argmax()) if used[:r.context_length].any() else 0
        width = max(1, int(r.response_mask[rows].sum(dim=1).max()))
        right = r.context_length + width
        return r.query_responses[rows, left:right], attention[:, left:right], r.context_length - left, width

    # -------------------------------------------------------------------------------------------
    # 5. bookkeeping
    # -------------------------------------------------------------------------------------------

    def statistics(self, r: Rollout, update: dict) -> dict:
        """Step statistics over every process's rows (gathered), so all ranks log the same."""
        acc = self.accelerator
        finite = acc.gather(r.scores.finite.to(self.device))
        raw = acc.gather(r.scores.total.to(self.device, torch.float32))[finite]
        shaped = acc.gather(r.shaped_scores.to(self.device, torch.float32))[finite]
        lengths = acc.gather(r.response_mask.sum(dim=1).float())
        kl_rows = acc.gather(r.kl.sum(dim=1))
        entropy_sum = acc.gather(torch.where(r.response_mask, r.entropy, 0).sum().reshape(1)).sum()
        stats = {
            "score_raw": _mean(raw), "score_raw_std": _std(raw),
            "score": _mean(shaped), "score_std": _std(shaped),
            "kl": kl_rows.mean().item(), "kl_coef": self.kl_ctl.value,
            "entropy": (entropy_sum / lengths.sum().clamp(min=1)).item(),
            "response_length": lengths.mean().item(),
            "eos_rate": acc.gather(r.has_eos.float()).mean().item(),
            "non_finite": int((~finite).sum()),
            "lr": self.scheduler.get_last_lr()[0],
            "explained_variance": acc.reduce(explained_variance(r.values, r.returns, r.mask), "mean").item(),
        }
        for name, part in r.scores.parts.items():
            values = acc.gather(part.to(self.device, torch.float32))
            stats[f"non_finite/{name}"] = int(values.numel() - torch.isfinite(values).sum())
            values = values[torch.isfinite(values)]
            stats[f"reward/{name}"] = _mean(values)
        names = {"policy_loss": "policy_loss", "clipfrac": "policy_clipfrac", "approx_kl": "approx_kl",
                 "ratio_mean": "ratio_mean", "value_loss": "value_loss", "vf_clipfrac": "value_clipfrac",
                 "grad_norm": "grad_norm"}
        for key, value in update.items():
            stats[names.get(key, key)] = acc.reduce(value.to(self.device), "mean").item()
        if stats["non_finite"]:
            bad_prompts = self._gather_bad_prompt_rows(r)
            self.log(f"step {self.step + 1}: {stats['non_finite']} of {len(finite)} episodes had a "
                     f"non-finite score and are not trained on (prompt rows {bad_prompts})")
        return stats

    def _gather_bad_prompt_rows(self, r: Rollout) -> list[int]:
        rows = torch.tensor(r.prompt_rows, device=self.device)
        rows = torch.where(r.scores.finite.to(self.device), -1, rows)
        return [int(i) for i in self.accelerator.gather(rows).tolist() if i >= 0]

    def record(self, stats: dict, r: Rollout) -> None:
        if not self.accelerator.is_main_process:
            return
        line = (f"step {stats['step']}/{self.total_steps} | score {stats['score_raw']:.3f}"
                f" (shaped {stats['score']:.3f}) | kl {stats['kl']:.4f} | entropy {stats['entropy']:.2f}"
                f" | len {stats['response_length']:.1f} | eos {stats['eos_rate']:.2f}"
                f" | clip {stats.get('policy_clipfrac', 0):.3f} | vf {stats.get('value_loss', 0):.3f}"
                f" | ev {stats['explained_variance']:.2f} | {stats['episodes_per_s']:.1f} ep/s")
        self.log(line)
        samples = [{"step": stats["step"], "prompt": _last_user(r.prompts[i]), "completion": r.completions[i],
                    "score": float(r.scores.total[i]) if bool(r.scores.finite[i]) else None}
                   for i in range(min(self.config.log_samples, len(r.completions)))]
        if samples and (stats["step"] == 1 or stats["step"] == self.total_steps
                        or stats["step"] % self.config.save_steps == 0):
            for s in samples[:2]:
                self.log(f"  sample: {s['prompt']!r} -> {s['completion']!r} (score {s['score']})")
        if self.output_dir is not None:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            with (self.output_dir / "stats.jsonl").open("a") as f:
                f.write(json.dumps(stats) + "\n")
            if samples:
                with (self.output_dir / "samples.jsonl").open("a") as f:
                    f.writelines(json.dumps(s) + "\n" for s in samples)

    def log(self, message: str) -> None:
        """Through tqdm, so lines print above the progress bar instead of through it."""
        if self.accelerator.is_main_process:
            from tqdm.auto import tqdm

            tqdm.write(self.log_prefix + message)

    # -------------------------------------------------------------------------------------------
    # checkpoints
    # -------------------------------------------------------------------------------------------

    def save_checkpoint(self, directory: str | Path | None = None) -> Path:
        """Trainable weights (adapter or full, and the value model), optimizer, scheduler, KL
        controller, score moments, step and statistics; trainer_state.json is written last."""
        from safetensors.torch import save_file

        root = Path(directory) if directory else self._checkpoint_root()
        path = root / f"checkpoint-{self.step}"
        acc = self.accelerator
        acc.wait_for_everyone()
        if acc.is_main_process:
            path.mkdir(parents=True, exist_ok=True)
            weights = {name: p.detach().contiguous().cpu()
                       for name, p in self.unwrapped.named_parameters() if p.requires_grad}
            save_file(weights, str(path / WEIGHTS_FILE))
            torch.save({"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()},
                       path / "optimizer.pt")
            state = {"step": self.step, "episodes": self.step * self.episodes_per_step,
                     "num_processes": self.num_processes, "kl_controller": self.kl_ctl.state_dict(),
                     "score_shaper": self.shaper.state_dict(), "config": asdict(self.config),
                     "history": self.history}
            tmp = path / f".{STATE_FILE}.tmp"
            tmp.write_text(json.dumps(state, indent=1))
            tmp.replace(path / STATE_FILE)
            self._prune(root)
            self.log(f"saved {path.name}")
        acc.wait_for_everyone()
        return path

    def load_checkpoint(self, path: str | Path) -> None:
        from safetensors.torch import load_file

        path = Path(path)
        state = json.loads((path / STATE_FILE).read_text())
        if state.get("num_processes", self.num_processes) != self.num_processes:
            raise AlignError(f"{path} was written by {state['num_processes']} processes and this run has "
                             f"{self.num_processes}; the prompt order would differ. Resume with the same "
                             "accelerate profile.")
        weights = load_file(str(path / WEIGHTS_FILE))
        expected = {name for name, p in self.unwrapped.named_parameters() if p.requires_grad}
        if set(weights) != expected:
            missing, extra = sorted(expected - set(weights)), sorted(set(weights) - expected)
            raise AlignError(f"{path} does not match this model's trainable parameters (missing "
                             f"{missing[:3]}, unexpected {extra[:3]}); was the tuning method changed?")
        self.unwrapped.load_state_dict(weights, strict=False)
        blob = torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True)
        self.optimizer.load_state_dict(blob["optimizer"])
        self.scheduler.load_state_dict(blob["scheduler"])
        self.kl_ctl.load_state_dict(state["kl_controller"])
        self.shaper.load_state_dict(state["score_shaper"])
        self.step = int(state["step"])
        self.history = list(state["history"])
        if self.output_dir is not None and self.accelerator.is_main_process:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            (self.output_dir / "stats.jsonl").write_text("".join(json.dumps(s) + "\n" for s in self.history))
            samples = self.output_dir / "samples.jsonl"
            if samples.exists():
                kept = [line for line in samples.read_text().splitlines()
                        if line.strip() and json.loads(line)["step"] <= self.step]
                samples.write_text("".join(line + "\n" for line in kept))
        self.log(f"resumed from {path.name}: step {self.step} of {self.total_steps}")

    def _checkpoint_root(self) -> Path:
        if self.output_dir is None:
            raise AlignError("save_checkpoint needs an output_dir (or a directory argument).")
        return self.output_dir / "checkpoints"

    def _prune(self, root: Path) -> None:
        done = sorted((p for p in root.glob("checkpoint-*") if (p / STATE_FILE).exists()),
                      key=lambda p: int(p.name.split("-")[-1]))
        for old in done[:-self.config.save_total_limit]:
            shutil.rmtree(old, ignore_errors=True)

    # -------------------------------------------------------------------------------------------
    # helpers
    # -------------------------------------------------------------------------------------------

    @property
    def unwrapped(self) -> ActorCritic:
        return self.accelerator.unwrap_model(self.model)

    def _lr_factor(self, update: int) -> float:
        c = self.config
        if c.warmup_steps and update < c.warmup_steps:
            return (update + 1) / c.warmup_steps
        if c.lr_scheduler_type == "constant":
            return 1.0
        total = self.total_steps * c.ppo_epochs * (c.batch_size // c.mini_batch_size)
        return max(0.0, 1.0 - (update - c.warmup_steps) / max(1, total - c.warmup_steps))

    def _eos_ids(self, policy) -> list[int]:
        """The tokenizer's EOS plus the model's (chat models often end a turn with another)."""
        ids = set()
        if self.tokenizer.eos_token_id is not None:
            ids.add(int(self.tokenizer.eos_token_id))
        config_eos = getattr(getattr(policy, "generation_config", None), "eos_token_id", None)
        if config_eos is not None:
            ids.update([config_eos] if isinstance(config_eos, int) else config_eos)
        if not ids:
            raise AlignError("the tokenizer has no EOS token, so PPO cannot tell where a completion ends.")
        return sorted(ids)

    def _encode_prompt(self, messages: list[dict]) -> list[int]:
        tok = self.tokenizer
        if tok.chat_template:
            text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            ids = tok(text, add_special_tokens=False)["input_ids"]
        else:
            ids = tok("\n".join(m["content"] for m in messages) + "\n")["input_ids"]
        limit = self.config.max_prompt_length
        return ids[-limit:] if limit else ids

    def _left_pad(self, sequences: list[list[int]]):
        width = max(len(s) for s in sequences)
        pad = self.tokenizer.pad_token_id
        ids = torch.full((len(sequences), width), pad, dtype=torch.long)
        mask = torch.zeros((len(sequences), width), dtype=torch.long)
        for i, s in enumerate(sequences):
            ids[i, width - len(s):] = torch.tensor(s, dtype=torch.long)
            mask[i, width - len(s):] = 1
        return ids.to(self.device), mask.to(self.device)

    def _ends_with_eos(self, responses: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        last = responses.gather(1, (mask.sum(dim=1, keepdim=True) - 1).clamp(min=0)).squeeze(1)
        return torch.isin(last, torch.tensor(self.eos_ids, device=responses.device))

    def _decode(self, responses: torch.Tensor, mask: torch.Tensor) -> list[str]:
        eos = torch.tensor(self.eos_ids, device=responses.device)
        keep = mask & ~torch.isin(responses, eos)
        return [self.tokenizer.decode(row[m].tolist(), skip_special_tokens=True).strip()
                for row, m in zip(responses, keep)]


def _tempered(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Logits of the distribution that was sampled (softmax(logits / T)), in float32."""
    logits = logits.float()
    return logits if temperature == 1.0 else logits / temperature


def _adamw(params, config: PPOConfig):
    """The fused AdamW kernel where torch has one for these parameters (several times faster
    per step than the per-tensor loop), else the plain one."""
    try:
        return torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay, fused=True)
    except (RuntimeError, ValueError):
        return torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay)


def stop_if_not_finite(stats: dict, step: int, output_dir) -> None:
    """A non-finite loss or gradient norm ends training before the broken weights are saved;
    the checkpoints written before (every `save_steps`) are kept for a resume."""
    for key in ("policy_loss", "value_loss", "grad_norm"):
        value = stats.get(key)
        if isinstance(value, float) and not math.isfinite(value):
            where = f" in {Path(output_dir) / 'checkpoints'}" if output_dir else ""
            raise NonFiniteError(f"PPO stopped at step {step}: {key} is {value}. The last good "
                                 f"checkpoint (if any) is kept{where}; lower the learning rate or "
                                 "check the rewards, then rerun to resume.")


def _mean(x: torch.Tensor) -> float:
    return x.float().mean().item() if x.numel() else float("nan")


def _std(x: torch.Tensor) -> float:
    return x.float().std(unbiased=False).item() if x.numel() > 1 else 0.0


def _last_user(messages: list[dict]) -> str:
    for m in reversed(messages):
        if m["role"] == "user":
            return m["content"]
    return messages[-1]["content"] if messages else ""
