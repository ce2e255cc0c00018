"""Named corpora -> cached token streams -> deterministic, fixed-shape batches.

``sources`` names the corpora and says where each split comes from and what identifies it; ``splits`` holds
the split rules; ``cache`` keys token files on a source's identity, so a cache hit reads no raw text;
``tokenize`` turns documents into ids and gives the byte each id stands for; ``stream`` pairs the two as a
``TokenStream``; ``batches`` draws training windows.

Splits are ``train``, ``validation`` (alias ``valid``) and ``test``.
"""

from chimera_jax.data.batches import check_split_length, get_batch
from chimera_jax.data.cache import cache_root
from chimera_jax.data.lookup import SHARED_DATA_DIR, DataNotFoundError, hub_offline_reason
from chimera_jax.data.sources import CORPORA, check_corpora, check_corpus, load_documents, load_text, with_fallback
from chimera_jax.data.splits import DOC_SEPARATOR, SPLITS, canonical_split
from chimera_jax.data.stream import TokenStream, load_stream
from chimera_jax.data.tokenize import token_byte_table

__all__ = [
    "CORPORA",
    "DOC_SEPARATOR",
    "SHARED_DATA_DIR",
    "SPLITS",
    "DataNotFoundError",
    "TokenStream",
    "cache_root",
    "canonical_split",
    "check_corpora",
    "check_corpus",
    "check_split_length",
    "get_batch",
    "hub_offline_reason",
    "load_documents",
    "load_stream",
    "load_text",
    "token_byte_table",
    "with_fallback",
]
