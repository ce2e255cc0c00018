"""EleutherAI's lm-evaluation-harness beside the bridge: our checkpoints as its ``chimera`` model, and our tasks.

- ``model``  the ``chimera`` lm-eval model (log-likelihoods and generation in JAX, tokenized as lm-eval's HF backend)
- ``tasks/`` task configs of our own (``bbc_topic``), found through ``TASKS_DIR``

Needs the ``eval`` extra (``pip install -e '.[eval]'``).
"""
