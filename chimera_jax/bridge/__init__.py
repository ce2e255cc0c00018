"""PyTorch / Hugging Face bridge: HF baselines under our evaluation protocol, weight import and export.

Everything here needs the optional ``torch`` extra (``pip install -e '.[torch]'``); the core package
never imports torch, and neither does this ``__init__``, so ``import chimera_jax.bridge`` always works.
Reading an HF model's spec, config and tokenizer needs no torch and sits below the data: chimera_jax/hf/.

- ``hf_load``       an HF causal LM and its tokenizer from a hub name, a folder, a ``.gguf`` or ``smollm2``
- ``convert``       HF GPT-2 / Llama weights <-> our ``Decoder`` (import and export)
- ``hf_tokenizer``  our tokenizers (gpt2, byte) as HF tokenizers, saved beside exported models
- ``hf_eval``       a torch model (HF, or one of our runs exported) through our one evaluation path
- ``hf_generate``   transformers' ``generate()`` timed, the reference our decoding is checked against
- ``measure``       tokens/s and peak memory, measured the same way for JAX and torch
- ``compare``       the comparison table: our checkpoints and HF baselines under one protocol
- ``torch_utils``   which torch device the bridge runs on
"""
