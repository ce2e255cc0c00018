"""PyTorch / Hugging Face bridge: HF baselines under our evaluation protocol, weight import and export.

Everything here needs the optional ``torch`` extra (``pip install -e '.[torch]'``); the core package
never imports torch, and neither does this ``__init__``, so ``import chimera_jax.bridge`` always works.

- ``torch_utils``   the one place torch is imported (with a clear error when it is missing)
- ``hf_load``       an HF causal LM and its tokenizer from a hub name, a folder, a ``.gguf`` or ``smollm2``
- ``hf_eval``       a torch model (HF, or one of our runs exported) through our one evaluation path
- ``measure``       tokens/s and peak memory, measured the same way for JAX and torch
- ``convert``       HF GPT-2 / Llama weights <-> our ``Decoder`` (import and export)
- ``hf_tokenizer``  our tokenizers (gpt2, byte) as HF tokenizers, and an HF tokenizer as ours (bytes per id)
- ``compare``       seed 000's table: our checkpoints and HF baselines under one protocol
"""
