"""chimera_jax: dense, MoE and time-indexed language models in JAX / Equinox."""
