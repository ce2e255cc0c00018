"""Greedy decoding with transformers' ``generate()``: the torch reference our generation is checked and timed against.

The model is one of ours exported in memory (``convert.to_hf`` / ``hf_load.run_model_as_hf``), so both sides
hold the same weights. Prompts are token ids (our tokenizer's), left-padded with an attention mask as
``generate()`` expects; the KV cache is on, sampling off, and ``min_new_tokens`` equals ``max_new_tokens`` so
no row stops early and every call decodes the same number of tokens.

The clock matches ``chimera_jax.generate.engine``: from the call (prompts already on the device) to the end
of the first forward pass (prefill), to the first new tokens on the host (first token), and the tokens of
the whole batch per second after the first (decode).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from chimera_jax.optional import require


@dataclass
class HFGeneration:
    """What one ``hf_generate`` call produced, and how fast; the timing fields mean what ``Generation``'s do."""

    tokens: list[list[int]]  # the new tokens of each prompt
    prompt_tokens: list[int]
    prefill_ms: float
    first_token_ms: float
    decode_tokens_per_s: float


class _Clock:
    """A ``generate()`` streamer and forward hook that records when each forward pass ends and each token lands."""

    def __init__(self, device):
        self.device = device
        self.forwards: list[float] = []
        self.tokens: list[float] = []
        self.prompt_seen = False

    def now(self) -> float:
        if self.device.type == "cuda":
            require("torch").cuda.synchronize(self.device)
        return time.perf_counter()

    def hook(self, module, args, output) -> None:
        self.forwards.append(self.now())

    def put(self, value) -> None:
        if self.prompt_seen:  # the first put is the prompt itself
            self.tokens.append(time.perf_counter())  # ``value`` is already on the host
        self.prompt_seen = True

    def end(self) -> None:
        pass


def hf_generate(model, prompts: Sequence[Sequence[int]], max_new_tokens: int, pad_id: int = 0) -> HFGeneration:
    """Continue each prompt (token ids) by exactly ``max_new_tokens`` greedy tokens with ``model.generate()``."""
    torch = require("torch")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens} must be >= 1")
    device = next(model.parameters()).device
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[pad_id] * (width - len(p)) + list(p) for p in prompts], device=device)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
    clock = _Clock(device)
    handle = model.register_forward_hook(clock.hook)
    try:
        with torch.inference_mode():
            start = clock.now()
            out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                                 min_new_tokens=max_new_tokens, do_sample=False, use_cache=True, num_beams=1,
                                 pad_token_id=pad_id, streamer=clock)
    finally:
        handle.remove()
    steps = max_new_tokens - 1
    return HFGeneration(
        tokens=out[:, width:].tolist(), prompt_tokens=[len(p) for p in prompts],
        prefill_ms=1000 * (clock.forwards[0] - start), first_token_ms=1000 * (clock.tokens[0] - start),
        decode_tokens_per_s=len(prompts) * steps / (clock.tokens[-1] - clock.tokens[0]) if steps else float("nan"))
