"""Hugging Face transformers engine: CPU anywhere, CUDA when present. The embedded default model runs here.

Requests with equal sampling settings are generated together in left-padded batches (one forward pass
per token for the whole batch), which is where CPU throughput comes from: 5.7 tok/s alone vs ~30 tok/s
at batch 16 on two cores.
"""
from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

from .base import Engine, EngineError, Request, Result, SamplingParams, Usage


def default_threads() -> int:
    """One torch thread on small machines: on 2 cores it was as fast as two and far steadier under load."""
    cores = os.cpu_count() or 1
    return 1 if cores <= 2 else min(cores, 8)


class TransformersEngine(Engine):
    backend = "transformers"

    def __init__(self, model_name: str | None = None, device: str | None = None, dtype: str | None = None,
                 threads: int | None = None, max_batch: int = 16,
                 progress: Callable[[str], None] | None = None) -> None:
        from ..models import ModelLoadError, resolve_model_dir, set_offline

        set_offline()
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self._torch = torch
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        if self.device == "cpu":
            torch.set_num_threads(threads or default_threads())
        model_dir, card = resolve_model_dir(model_name, progress)
        self.model_name = card.name if card else str(model_name)
        self.card = card
        torch_dtype = getattr(torch, dtype) if dtype else (torch.bfloat16 if self.device == "cuda" else torch.float32)
        started = time.perf_counter()
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
            self.model = AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True, dtype=torch_dtype)
            self.model.to(self.device).eval()
        except Exception as exc:
            raise ModelLoadError(f"could not load model from {model_dir}: {type(exc).__name__}: {exc}") from exc
        self.load_seconds = time.perf_counter() - started
        self.tokenizer.padding_side = "left"  # decoder-only batching: pad on the left so all rows end together
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.max_batch = max(1, max_batch)
        has_template = bool(getattr(self.tokenizer, "chat_template", None))
        self.prompt_format = card.prompt_format if card else ("chat" if has_template else "completion")  # type: ignore[assignment]
        self.context_length = (card.context_length if card else 0) or int(
            getattr(self.model.config, "max_position_embeddings", 0) or 8192)

    # ---- prompt rendering -------------------------------------------------------------------------------
    def render(self, request: Request) -> str:
        if request.prompt is not None:
            return request.prompt
        messages = list(request.messages or ())
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return gemma_turns(messages)

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    # ---- generation -------------------------------------------------------------------------------------
    def generate(self, requests: list[Request]) -> list[Result]:
        results: list[Result | None] = [None] * len(requests)
        # Different sampling settings cannot share one generate() call; group, keeping input positions.
        groups: dict[SamplingParams, list[int]] = {}
        for i, req in enumerate(requests):
            groups.setdefault(req.sampling, []).append(i)
        for sampling, indices in groups.items():
            for start in range(0, len(indices), self.max_batch):
                chunk = indices[start:start + self.max_batch]
                texts = [self.render(requests[i]) for i in chunk]
                for i, res in zip(chunk, self._generate_isolated(texts, sampling)):
                    results[i] = res
        return [r if r is not None else Result.failed("internal error: no result") for r in results]

    def _generate_isolated(self, texts: list[str], sampling: SamplingParams) -> list[Result]:
        """Generate a batch; if the batch as a whole fails, retry one by one so only the bad request fails."""
        try:
            return self._generate_batch(texts, sampling)
        except Exception as exc:
            if len(texts) == 1:
                return [Result.failed(f"transformers: {type(exc).__name__}: {exc}")]
        out: list[Result] = []
        for text in texts:
            try:
                out.extend(self._generate_batch([text], sampling))
            except Exception as exc:
                out.append(Result.failed(f"transformers: {type(exc).__name__}: {exc}"))
        return out

    def _generate_batch(self, texts: list[str], sampling: SamplingParams) -> list[Result]:
        torch = self._torch
        started = time.perf_counter()
        # Chat templates already write BOS; adding another would shift every position the model learned.
        bos = self.tokenizer.bos_token or ""
        add_special = not (bos and all(t.startswith(bos) for t in texts))
        enc = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=add_special)
        prompt_lens = enc["attention_mask"].sum(dim=1).tolist()
        too_long = [n for n in prompt_lens if n + sampling.max_tokens > self.context_length]
        if too_long:
            # Failing the whole batch sends us through the one-by-one path, which pins the error on its request.
            raise EngineError(f"prompt of {max(too_long)} tokens plus max_tokens={sampling.max_tokens} exceeds "
                              f"the model's context of {self.context_length} tokens")
        enc = {k: v.to(self.device) for k, v in enc.items()}
        gen_kwargs: dict[str, Any] = dict(max_new_tokens=sampling.max_tokens,
                                          pad_token_id=self.tokenizer.pad_token_id)
        if sampling.greedy:
            gen_kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        else:
            if sampling.seed is not None:
                torch.manual_seed(sampling.seed)
            gen_kwargs.update(do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p, top_k=None)
        if sampling.stop:
            gen_kwargs.update(stop_strings=list(sampling.stop), tokenizer=self.tokenizer)
        with torch.inference_mode():
            out = self.model.generate(**enc, **gen_kwargs)
        new_tokens = out[:, enc["input_ids"].shape[1]:].tolist()
        elapsed = time.perf_counter() - started
        return [self._decode(row, prompt_len, sampling, elapsed / len(texts))
                for row, prompt_len in zip(new_tokens, prompt_lens)]

    def _decode(self, token_ids: list[int], prompt_len: int, sampling: SamplingParams, seconds: float) -> Result:
        eos_ids = self._eos_ids()
        pad = self.tokenizer.pad_token_id
        kept: list[int] = []
        finish = "length"
        for tok in token_ids:
            if tok in eos_ids:
                finish = "stop"
                break
            kept.append(tok)
        while kept and kept[-1] == pad and pad not in eos_ids:
            kept.pop()
        text = self.tokenizer.decode(kept, skip_special_tokens=True)
        cut = [text.find(s) for s in sampling.stop if s in text]
        if cut:
            text, finish = text[: min(cut)], "stop"
        usage = Usage(calls=1, prompt_tokens=int(prompt_len), cached_tokens=0, completion_tokens=len(kept),
                      seconds=seconds)
        return Result(text=text, finish_reason=finish, usage=usage)  # type: ignore[arg-type]

    def _eos_ids(self) -> set[int]:
        ids = self.model.generation_config.eos_token_id
        ids = set(ids if isinstance(ids, list) else [ids] if ids is not None else [])
        if self.tokenizer.eos_token_id is not None:
            ids.add(self.tokenizer.eos_token_id)
        return ids

    def close(self) -> None:
        self.model = None  # type: ignore[assignment]


def gemma_turns(messages: list[dict[str, str]]) -> str:
    """Gemma's turn format, for tokenizers that ship without a chat template (the embedded GGUF has none).
    Gemma has no system role: the system text opens the first user turn."""
    system = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
    parts: list[str] = []
    for m in messages:
        if m["role"] == "system":
            continue
        content = m["content"]
        if system and not parts and m["role"] == "user":
            content = f"{system}\n\n{content}"
        role = "model" if m["role"] == "assistant" else "user"
        parts.append(f"<start_of_turn>{role}\n{content}<end_of_turn>\n")
    return "".join(parts) + "<start_of_turn>model\n"
