"""chimera_jax: dense, MoE and time-indexed language models in JAX / Equinox, compared on equal terms.

The package in layers, top to bottom (tests/test_imports.py enforces them; nothing imports a layer above it):
``cli`` -> ``bench``, ``study``, ``finetune``, ``analysis`` -> ``bridge``, ``harness``, ``generate``, ``runs`` ->
``train`` -> ``eval`` -> ``models``, ``data`` -> ``config``, ``flags``, ``tokenizer``, ``hf``, ``errors``, ``optional``,
``timing``, ``markdown``, ``malloc``.
"""
