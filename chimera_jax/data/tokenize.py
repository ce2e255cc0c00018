"""Documents -> one token array, and what each id of it stands for in the original text.

Documents are joined by the tokenizer's EOS id, or by the encoded ``DOC_SEPARATOR`` when it has none. Either
way the stream stands for ``load_text``'s string, so the byte rule (``token_byte_table``) counts it exactly.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
from tqdm import tqdm

from chimera_jax.data.splits import DOC_SEPARATOR
from chimera_jax.tokenizer import Tokenizer, count_bytes

CHUNK_CHARS = 1 << 20  # long documents are tokenized in ~1M-character pieces (progress, threads)


def token_byte_table(tokenizer: Tokenizer) -> np.ndarray:
    """int64 [vocab]: UTF-8 bytes of the original text each id stands for; bits/byte's one denominator.

    Ordinary ids count the bytes they decode to; the EOS id, which the stream puts between documents,
    stands for the ``DOC_SEPARATOR`` it replaces; other special ids count 0. Read-only.
    """
    table = np.array(tokenizer.id_byte_lengths(), dtype=np.int64)
    if table.shape != (tokenizer.vocab_size,):
        raise ValueError(f"{tokenizer.name}: id_byte_lengths() has shape {table.shape}, "
                         f"not ({tokenizer.vocab_size},)")
    if tokenizer.eos_id is not None:
        table[tokenizer.eos_id] = count_bytes(DOC_SEPARATOR)
    table.flags.writeable = False
    return table


def gpt2_safe_chunks(text: str, size: int = CHUNK_CHARS) -> list[str]:
    """Cut ``text`` into ~``size`` pieces that tokenize exactly like the whole.

    Every cut falls where a non-space character is followed by an ASCII space or newline. No GPT-2
    (or byte) pre-tokenizer piece spans such a point, and the pattern's only end-of-text rule
    (``\\s++$``) needs trailing whitespace, which no piece but the last can have.
    """
    chunks, start = [], 0
    while len(text) - start > size:
        cut = start + size
        while cut < len(text) and not (text[cut] in " \n" and not text[cut - 1].isspace()):
            cut += 1
        chunks.append(text[start:cut])
        start = cut
    if start < len(text) or not chunks:
        chunks.append(text[start:])
    return chunks


def _batched(items: Sequence, n: int) -> Iterable[Sequence]:
    for i in range(0, len(items), n):
        yield items[i : i + n]


def tokenize_documents(docs: Sequence[str], tok: Tokenizer, dtype: np.dtype, progress: bool = False) -> np.ndarray:
    """All documents as one ``dtype`` array, joined by EOS or, without one, the encoded ``DOC_SEPARATOR``."""
    sep = np.asarray([tok.eos_id] if tok.eos_id is not None else tok.encode_batch([DOC_SEPARATOR])[0], dtype)
    # (starts a new document?, text) so that batches can mix pieces of many documents.
    pieces = [(j == 0 and d > 0, c) for d, doc in enumerate(docs) for j, c in enumerate(gpt2_safe_chunks(doc))]
    out: list[np.ndarray] = []
    with tqdm(total=sum(len(d) for d in docs), unit="char", unit_scale=True, disable=not progress,
              desc=f"tokenizing ({tok.name})") as bar:
        for group in _batched(pieces, 256):
            for (new_doc, text), ids in zip(group, tok.encode_batch([t for _, t in group]), strict=True):
                if new_doc:
                    out.append(sep)
                out.append(np.asarray(ids, dtype=dtype))
                bar.update(len(text))
    return np.concatenate(out) if out else np.zeros(0, dtype)
