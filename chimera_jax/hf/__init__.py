"""Hugging Face files read without torch: where a model spec points, its config, and its tokenizer as ours.

Below the data pipeline (which tokenizes with ``hf:SPEC`` tokenizers) and the bridge (which loads the weights):

- ``spec``       a hub name, folder, ``.gguf`` file or packaged name (``smollm2``) -> where to load it from
- ``tokenizer``  an HF tokenizer as a chimera ``Tokenizer`` (ids, bytes per id, a copy saved in a run)
"""
