"""EleutherAI's lm-evaluation-harness on chimera checkpoints: the ``chimera`` model of its registry.

    lm_eval.simple_evaluate(model="chimera", model_args="checkpoint=RUN_DIR[,step=N,depth=L,max_length=T]", tasks=[...])
    python -m chimera_jax.harness.model run --model chimera --model_args checkpoint=RUN --tasks T  # its CLI

Requests are tokenized as lm-eval's HF backend tokenizes them (``TemplateLM``: the whole text encoded, the
context's tokens split off, trailing context spaces moved into the continuation; an empty context or a
rolling window starts from the end-of-text id), and a context too long for the model loses tokens from the
left, as there. So a chimera model and its HF export (bridge/convert.py) score every request alike, and a
task's numbers compare with any HF model's.

Scoring is one jitted forward pass per batch (``token_nll``, the loss training and evaluation use) over
right-padded rows: rows are sorted by length, batches padded to ``batch_size`` rows and to a power-of-two
width (``generate.engine.bucket``, at most ``max_length``), so a whole task compiles once per width used.
Generation is ``Generator`` (KV-cached, greedy unless the task samples), cut at the task's ``until`` texts and
the end-of-text id's text.
MoE layers run dropless (``generate.loading``): a request's score must not depend on its batch-mates.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.models.utils import handle_stop_sequences, normalize_gen_kwargs
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
from tqdm.auto import tqdm

from chimera_jax.data.splits import DOC_SEPARATOR
from chimera_jax.generate.engine import Generator, bucket
from chimera_jax.generate.loading import load_for_decoding
from chimera_jax.generate.sampling import Sampling
from chimera_jax.hf.spec import load_hf_tokenizer
from chimera_jax.hf.tokenizer import HFTokenizer
from chimera_jax.models.loss import token_nll
from chimera_jax.tokenizer import Tokenizer, get_tokenizer

TASKS_DIR = Path(__file__).parent / "tasks"  # our own task configs (bbc_topic), for TaskManager(include_path=...)
DEFAULT_MAX_GEN_TOKS = 256  # lm-eval's HF backend's default
SAMPLING_KWARGS = ("do_sample", "temperature", "top_k", "top_p")  # the gen_kwargs Generator understands

Request = tuple[tuple[str, str] | None, list[int], list[int]]  # (strings, context ids, continuation ids)


@eqx.filter_jit
def token_scores(model: eqx.Module, inputs: Int[Array, "B T"],
                 targets: Int[Array, "B T"]) -> tuple[Float[Array, "B T"], Bool[Array, "B T"]]:
    """Each target's log-probability and whether it is the model's greedy choice, at every position."""
    logits, _ = model(inputs, inference=True)
    return -token_nll(logits, targets), jnp.argmax(logits, axis=-1) == targets


def scored_row(context: list[int], continuation: list[int], max_length: int) -> tuple[list[int], list[int]]:
    """``(inputs, targets)`` of one request: the last ``max_length`` inputs, as lm-eval's HF backend keeps them;
    the continuation is the last ``len(continuation)`` targets."""
    whole = (context + continuation)[-(max_length + 1):]
    return whole[:-1], whole[1:]


def end_of_text_id(tokenizer: Tokenizer) -> int:
    """The end-of-text id, or for a tokenizer without one (``byte``) the last id of the text joining documents:
    what precedes a document in training either way. An empty context and each rolling window start from it, and
    generation stops at its text, as lm-eval's HF backend does with an HF tokenizer's EOS."""
    return tokenizer.eos_id if tokenizer.eos_id is not None else tokenizer.encode(DOC_SEPARATOR)[-1]


def hf_tokenizer_for_lm_eval(spec: str):
    """The HF model ``spec``'s own tokenizer, given an EOS in memory where it has none (our byte-level exports):
    ``end_of_text_id``, so lm-eval's HF backend, which needs an EOS to prefix an empty context, pad and stop
    generation, scores such a model as ``ChimeraLM`` scores its checkpoint. Only in memory: an export keeps the
    byte tokenizer's ids and byte counts, in which a newline is ordinary text."""
    hf_tok = load_hf_tokenizer(spec)
    if hf_tok.eos_token_id is None:
        hf_tok.eos_token = hf_tok.convert_ids_to_tokens(end_of_text_id(HFTokenizer(hf_tok, spec)))
    return hf_tok


@register_model("chimera")
class ChimeraLM(TemplateLM):
    """A chimera run directory's checkpoint as an lm-eval model.

    ``depth``: a time-indexed model's layers (default: its n_layers); ``max_length``: the longest input scored
    (default: the model's ``max_seq_len``, else its training ``seq_len``, which is also what an HF export
    declares); ``batch_size``: rows per forward pass.
    ``max_batch_size`` and ``device``, which lm-eval hands every model, are not used: JAX places the arrays.
    Any other argument is an error, so a misspelt one is not silently dropped.
    """

    def __init__(self, checkpoint: str, step: int | None = None, depth: int | None = None, batch_size: int | str = 8,
                 max_length: int | None = None, max_gen_toks: int = DEFAULT_MAX_GEN_TOKS,
                 max_batch_size: int | None = None, device: str | None = None) -> None:
        super().__init__()
        if not (Path(checkpoint) / "checkpoints").is_dir():
            raise ValueError(f"checkpoint: {checkpoint} is not a run directory (no checkpoints/ in it)")
        if str(batch_size).startswith("auto"):
            raise ValueError("batch_size: the chimera backend takes a number of rows, not 'auto'")
        self.batch_size = int(batch_size)
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")
        self.model, self.config = load_for_decoding(checkpoint, step=None if step is None else int(step),
                                                    depth=None if depth is None else int(depth))
        self.chimera_tokenizer = get_tokenizer(self.config.data.tokenizer)
        own_length = self.config.model.max_seq_len or self.config.data.seq_len
        self.max_length = own_length if max_length is None else int(max_length)
        if self.config.model.positions == "learned" and self.max_length > own_length:
            raise ValueError(f"max_length {self.max_length} exceeds the model's {own_length} learned positions")
        self.max_gen_toks = int(max_gen_toks)
        self.checkpoint = checkpoint
        self._generator: Generator | None = None

    # ---- what TemplateLM tokenizes with ----
    @property
    def eot_token_id(self) -> int:
        return end_of_text_id(self.chimera_tokenizer)

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **_: object) -> list[int]:
        return self.chimera_tokenizer.encode(string)

    @property
    def tokenizer_name(self) -> str:
        return self.config.data.tokenizer

    def get_model_info(self) -> dict:
        """Recorded in lm-eval's results under ``config``."""
        return {"checkpoint": self.checkpoint, "model_name": self.config.name, "tokenizer": self.tokenizer_name,
                "max_length": self.max_length}

    # ---- scoring ----
    def _batches(self, rows: list[tuple[list[int], list[int]]]) -> Iterator[tuple[list[int], np.ndarray,
                                                                                   np.ndarray]]:
        """``(row indices, inputs, targets)`` padded to ``[batch_size, width]``, longest rows first."""
        order = sorted(range(len(rows)), key=lambda i: -len(rows[i][0]))
        for start in range(0, len(order), self.batch_size):
            chunk = order[start:start + self.batch_size]
            width = min(bucket(len(rows[chunk[0]][0])), self.max_length)
            inputs = np.zeros((self.batch_size, width), np.int32)
            targets = np.zeros((self.batch_size, width), np.int32)
            for r, i in enumerate(chunk):
                row_inputs, row_targets = rows[i]
                inputs[r, :len(row_inputs)] = row_inputs
                targets[r, :len(row_targets)] = row_targets
            yield chunk, inputs, targets

    def _loglikelihood_tokens(self, requests: Sequence[Request], disable_tqdm: bool = False,
                              **_: object) -> list[tuple[float, bool]]:
        rows = []
        for _strings, context, continuation in requests:
            if not context or not continuation or len(continuation) > self.max_length:
                raise ValueError(f"a request needs a context and a continuation of 1..{self.max_length} tokens, "
                                 f"got {len(context)} and {len(continuation)}")
            rows.append(scored_row(context, continuation, self.max_length))
        results: list[tuple[float, bool]] = [(0.0, False)] * len(rows)
        progress = tqdm(total=len(rows), disable=disable_tqdm, desc="chimera loglikelihood", leave=False)
        for chunk, inputs, targets in self._batches(rows):
            logprobs, greedy = (np.asarray(a) for a in token_scores(self.model, inputs, targets))
            for r, i in enumerate(chunk):
                n_inputs, n_continuation = len(rows[i][0]), len(requests[i][2])
                cont = slice(n_inputs - n_continuation, n_inputs)
                results[i] = (float(logprobs[r, cont].sum()), bool(greedy[r, cont].all()))
                if requests[i][0] is not None:
                    self.cache_hook.add_partial("loglikelihood", requests[i][0], results[i])
            progress.update(len(chunk))
        progress.close()
        return results

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """Each text's total log-likelihood from the end-of-text id on, in disjoint windows of ``max_length``
        (lm-eval's ``get_rolling_token_windows``, as its HF backend does)."""
        windows, owners = [], []
        for i, (text,) in enumerate(req.args for req in requests):
            for context, continuation in map(make_disjoint_window, get_rolling_token_windows(
                    self.tok_encode(text), self.eot_token_id, self.max_length, context_len=1)):
                windows.append((None, context, continuation))
                owners.append(i)
        totals = [0.0] * len(requests)
        for owner, (logprob, _) in zip(owners, self._loglikelihood_tokens(windows, disable_tqdm), strict=True):
            totals[owner] += logprob
        for req, total in zip(requests, totals, strict=True):
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, total)
        return totals

    # ---- generation ----
    @property
    def generator(self) -> Generator:
        if self._generator is None:
            self._generator = Generator(self.model, self.chimera_tokenizer)
        return self._generator

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Batches of requests that share their generation settings, each batch one ``Generator.generate``
        call padded to ``batch_size`` prompts (so it compiles once per prompt bucket); each context keeps its
        last ``max_length - max_gen_toks`` tokens."""
        groups: dict[str, list[int]] = {}
        for i, req in enumerate(requests):
            groups.setdefault(repr(sorted(req.args[1].items())), []).append(i)
        texts = [""] * len(requests)
        progress = tqdm(total=len(requests), disable=disable_tqdm, desc="chimera generate_until", leave=False)
        for indices in groups.values():
            kwargs = normalize_gen_kwargs(requests[indices[0]].args[1], self.max_gen_toks)
            until = handle_stop_sequences(kwargs.pop("until"), self.chimera_tokenizer.decode([self.eot_token_id]))
            max_new = kwargs.pop("max_gen_toks")
            unknown = sorted(set(kwargs) - set(SAMPLING_KWARGS))
            if unknown:
                raise ValueError(f"generation settings the chimera backend does not take: {', '.join(unknown)}")
            sampling = Sampling(float(kwargs.get("temperature", 0.0)) if kwargs.get("do_sample") else 0.0,
                                kwargs.get("top_k"), float(kwargs.get("top_p", 1.0)))
            room = self.max_length - max_new
            if room < 1:
                raise ValueError(f"max_gen_toks={max_new} leaves no room for a context in {self.max_length} tokens")
            prompts = [self._left_truncated(requests[i].args[0], room) for i in indices]
            order = sorted(range(len(indices)), key=lambda j: -len(prompts[j]))
            for start in range(0, len(order), self.batch_size):
                chunk = order[start:start + self.batch_size]
                batch = [prompts[j] for j in chunk]
                batch += [batch[-1]] * (self.batch_size - len(batch))
                out = self.generator.generate(batch, max_new, sampling, stop=until)
                for j, text in zip(chunk, out.texts, strict=False):
                    texts[indices[j]] = text
                    self.cache_hook.add_partial("generate_until", requests[indices[j]].args, text)
                progress.update(len(chunk))
        progress.close()
        return texts

    def _left_truncated(self, context: str, n_tokens: int) -> str:
        """``context`` as the text of its last ``n_tokens`` tokens (``Generator`` takes text)."""
        ids = self.tok_encode(context)
        return context if len(ids) <= n_tokens else self.chimera_tokenizer.decode(ids[-n_tokens:])


if __name__ == "__main__":  # lm-eval's own command line, with "chimera" registered
    from lm_eval.__main__ import cli_evaluate

    cli_evaluate()
