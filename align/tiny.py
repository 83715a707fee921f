"""The embedded tiny model: a small Llama and a byte-level BPE tokenizer trained on its text.

It lets the whole pipeline run on a CPU in minutes with no download. The model is randomly
initialised (the `pretrain` stage teaches it the world); the chat template marks assistant
turns with `{% generation %}` so TRL's assistant-only loss works on it as on a real model.
The tokenizer learns from the text the model will train on (the world's, or a recipe's own:
`base_model.tokenizer_texts`). Builds are cached by their settings and that text, so every
recipe and test that asks for the same shares one build.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from align.data.world import WorldConfig, build_world, training_text
from align.honesty.responses import DEFAULT_IDK_RESPONSES

PAD, BOS, EOS = "<|pad|>", "<|bos|>", "<|end|>"
ROLE_TOKENS = ["<|system|>", "<|user|>", "<|assistant|>"]

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "{{ '<|assistant|>\n' }}{% generation %}{{ message['content'] + '<|end|>' }}{% endgeneration %}"
    "{{ '\n' }}"
    "{% else %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + '<|end|>\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)


@dataclass
class TinyConfig:
    vocab_size: int = 1152
    hidden_size: int = 128
    intermediate_size: int = 384
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    max_position_embeddings: int = 256
    seed: int = 0
    # The longest token BPE may learn, in characters (None: no limit). A limit splits long names
    # into pieces for every entity, read or not, as a real tokenizer splits rare names.
    max_token_length: int | None = None
    world: WorldConfig = field(default_factory=WorldConfig)

    @classmethod
    def from_dict(cls, d: dict | None) -> "TinyConfig":
        d = dict(d or {})
        world = WorldConfig(**d.pop("world", {}) or {})
        return cls(world=world, **d)

    def key(self, texts: list[str]) -> str:
        """The build's cache key: these settings and the text the tokenizer learns from."""
        settings = asdict(self)
        if settings["max_token_length"] is None:  # the keys of builds made before the setting
            del settings["max_token_length"]
        blob = json.dumps({"v": 4, **settings, "text": text_digest(texts)}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def text_digest(texts: list[str]) -> str:
    """A hash of a list of texts (each one's length is hashed too, so no two lists collide)."""
    h = hashlib.sha256()
    for text in texts:
        data = text.encode()
        h.update(len(data).to_bytes(8, "little") + data)
    return h.hexdigest()[:16]


def cache_root() -> Path:
    return Path(os.environ.get("ALIGN_CACHE", Path.home() / ".cache" / "align"))


def train_tokenizer(texts: list[str], vocab_size: int, max_token_length: int | None = None):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    specials = [PAD, BOS, EOS, *ROLE_TOKENS]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), max_token_length=max_token_length)
    # The IDK replies are repeated so BPE merges them into words, as a real tokenizer would have:
    # spelled out byte by byte they are 20 tokens long, and a tiny model garbles them.
    core.train_from_iterator(texts + list(DEFAULT_IDK_RESPONSES) * 25, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token=PAD, bos_token=BOS, eos_token=EOS,
        additional_special_tokens=ROLE_TOKENS, model_max_length=512)
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.padding_side = "right"
    return tokenizer


def build_tiny(config: TinyConfig | None = None, out_dir: str | Path | None = None,
               texts: list[str] | None = None) -> Path:
    """Build (or reuse) the tiny model and tokenizer; returns the directory that holds them.
    `texts` is what the tokenizer learns from: by default the world's training text; a recipe
    passes the text its stages train on (`base_model.tokenizer_texts`)."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    config = config or TinyConfig()
    texts = training_text(build_world(config.world)) if texts is None else texts
    out = Path(out_dir) if out_dir else cache_root() / "tiny" / config.key(texts)
    if (out / "tiny.json").exists():
        return out
    tokenizer = train_tokenizer(texts, config.vocab_size, config.max_token_length)
    model_config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size, num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads,
        num_key_value_heads=config.num_key_value_heads,
        max_position_embeddings=config.max_position_embeddings, tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(config.seed)
    model = LlamaForCausalLM(model_config)
    model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id, max_new_tokens=32, do_sample=False)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tiny-", dir=out.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        learned = {"texts": len(texts), "characters": sum(map(len, texts)),
                   "digest": text_digest(texts)}
        (tmp / "tiny.json").write_text(json.dumps({**asdict(config), "tokenizer_text": learned},
                                                  indent=1))
        try:
            tmp.rename(out)
        except OSError:  # another process built it first
            if not (out / "tiny.json").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def count_parameters(path: str | Path) -> int:
    from transformers import AutoModelForCausalLM

    return sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(path).parameters())
