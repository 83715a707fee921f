"""`align chat ARTIFACT`: talk to any model artifact through its chat template.

Tokens are streamed as they are generated (transformers' `TextStreamer`); without `--prompt`
it is a multi-turn loop over standard input (each line a user turn; `/clear` starts over,
`/exit` or end of input stops), with `--prompt` one question and one answer.
"""

from __future__ import annotations

import sys
from typing import IO, Iterable

from align.artifacts import load_artifact
from align.errors import AlignError
from align.generation import question_familiarity, scored_answers
from align.honesty.abstention import load_policy
from align.kinds import model_kinds
from align.modeling import load_artifact_model, load_tokenizer


class Chat:
    def __init__(self, artifact_path: str, *, system: str | None = None,
                 max_new_tokens: int = 256, temperature: float = 0.0, out: IO[str] | None = None):
        artifact = load_artifact(artifact_path)
        ref = artifact.manifest.model
        if ref is None or ref.task != "causal-lm":
            raise AlignError(f"artifact '{artifact.name}' ({artifact.manifest.kind} stage, "
                             f"{artifact.path}) holds no language model to chat with; chat with "
                             "the artifact of a stage that trains one "
                             f"({', '.join(model_kinds('causal-lm'))}).")
        self.tokenizer = load_tokenizer(artifact.tokenizer_path())
        if not self.tokenizer.chat_template:
            raise AlignError(f"artifact '{artifact.name}' ({artifact.path}): its tokenizer has no "
                             "chat template, so a conversation cannot be turned into the model's "
                             "prompt; chat with the artifact of a model whose tokenizer has one "
                             "(a chat or instruct base model).")
        self.model = load_artifact_model(artifact).eval()
        # An abstain stage's model: each answer is generated whole, then kept or replaced.
        self.policy = load_policy(artifact.model_path())
        self.system = system
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.out = out or sys.stdout
        self.messages: list[dict] = []
        self.clear()

    def clear(self) -> None:
        self.messages = [{"role": "system", "content": self.system}] if self.system else []

    def reply(self, text: str) -> str:
        """One user turn: the answer is streamed to `out` and kept in the conversation."""
        import torch
        from transformers import TextStreamer

        self.messages.append({"role": "user", "content": text})
        enc = self.tokenizer.apply_chat_template(self.messages, add_generation_prompt=True,
                                                 return_dict=True, return_tensors="pt")
        enc = {k: v.to(self.model.device) for k, v in enc.items()}
        streamer = TextStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        streamer.on_finalized_text = self._write  # to `out`, not always stdout
        sample = self.temperature > 0
        kwargs = dict(max_new_tokens=self.max_new_tokens, do_sample=sample,
                      pad_token_id=self.tokenizer.pad_token_id,
                      eos_token_id=self.tokenizer.eos_token_id)
        if self.policy is None:
            kwargs["streamer"] = streamer
        else:
            kwargs.update(output_logits=True, return_dict_in_generate=True)
        if sample:
            kwargs.update(temperature=self.temperature)
        else:
            kwargs.update(temperature=None, top_p=None, top_k=None)
        with torch.no_grad():
            generated = self.model.generate(**enc, **kwargs)
        if self.policy is None:
            answer = self.tokenizer.decode(generated[0, enc["input_ids"].shape[1]:],
                                           skip_special_tokens=True).strip()
        else:
            new = generated.sequences[:, enc["input_ids"].shape[1]:]
            answer = self.tokenizer.decode(new[0], skip_special_tokens=True).strip()
            prompt = self.tokenizer.apply_chat_template(self.messages, tokenize=False,
                                                        add_generation_prompt=True)
            familiar = question_familiarity(self.model, self.tokenizer, [prompt], [text])
            answer = self.policy.decide(scored_answers(self.tokenizer, [text], [answer],
                                                       generated.logits, new, familiar)[0])
            self._write(answer, stream_end=True)
        self.messages.append({"role": "assistant", "content": answer})
        return answer

    def _write(self, text: str, stream_end: bool = False) -> None:
        self.out.write(text + ("\n" if stream_end else ""))
        self.out.flush()

    def loop(self, lines: Iterable[str], interactive: bool = False) -> int:
        """Turns from `lines` until `/exit` or their end; returns the number of turns."""
        turns = 0
        if interactive:
            self.out.write("align chat: type a message; /clear starts over, /exit stops.\n")
        while True:
            if interactive:
                self.out.write("\nuser> ")
                self.out.flush()
            line = _next(lines)
            if line is None:
                break
            text = line.strip()
            if not text:
                continue
            if text in ("/exit", "/quit"):
                break
            if text == "/clear":
                self.clear()
                continue
            if interactive:
                self.out.write("assistant> ")
            self.reply(text)
            turns += 1
        return turns


def _next(lines) -> str | None:
    if hasattr(lines, "readline"):
        line = lines.readline()
        return line if line else None
    try:
        return next(lines)
    except StopIteration:
        return None
