"""The scoring core: how a model is scored on a token stream, used by training, the commands and the bridge alike.

- ``protocol``   EvalProtocol: corpus, split, tokenizer, window length, stride, what counts (printed with results)
- ``windows``    a stream cut into fixed-shape windows, with the tokens each one scores
- ``perplexity`` the one loop: loss, perplexity and bits per byte from per-token NLL
- ``streaming``  scoring through a rolling KV cache (sinks + window), past the training length

A saved run evaluated from its directory: chimera_jax/runs/. The lm-eval adapter: chimera_jax/harness/.
"""
