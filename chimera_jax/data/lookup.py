"""Where a corpus split lives (local folders, an installed package, the Hugging Face Hub) and what identifies it.

A ``Source`` pairs a cheap identity (files' paths, sizes and mtimes; a package's name and version; a Hub
address) with a reader, so the token cache can be keyed without reading any text.

Local copies are looked for in ``DataConfig.data_dir``, then ``$CHIMERA_DATA_DIR``, then the ``shared/data``
folder next to the repository.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.metadata
import importlib.util
import os
import socket
from collections.abc import Callable, Sequence
from pathlib import Path
from urllib.parse import urlparse

from chimera_jax.config import DataConfig
from chimera_jax.errors import UserError

SHARED_DATA_DIR = Path(__file__).resolve().parents[3] / "shared" / "data"


class DataNotFoundError(UserError, FileNotFoundError):
    """A corpus split is neither on disk nor reachable; the message says where we looked, its first line what is
    missing."""


@dataclasses.dataclass(frozen=True)
class Source:
    """One corpus split: what identifies its text, and how to read its documents.

    ``identity`` (JSON-serialisable) is computed without reading any text and changes whenever the text
    can; it keys the token cache. ``read`` returns the split's documents in a fixed order.
    """

    identity: dict
    read: Callable[[], list[str]]

    def map(self, f: Callable[[list], list[str]]) -> Source:
        """The same source with its documents passed through ``f`` (a selection or a layout)."""
        return Source(self.identity, lambda: f(self.read()))


def files_identity(files: Sequence[Path]) -> dict:
    """Each file's resolved path, size and mtime: editing, adding or removing a file changes it."""
    stats = [(f.resolve(), f.stat()) for f in files]
    return {"files": [[str(path), st.st_size, st.st_mtime_ns] for path, st in stats]}


def package_dir(module: str) -> Path | None:
    """Folder of an installed package, found without importing it (imports can need extra deps)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def package_identity(distribution: str) -> dict:
    """An installed distribution's name and version: the text it ships changes only with the version."""
    return {"package": distribution, "version": importlib.metadata.version(distribution)}


def data_roots(cfg: DataConfig) -> list[tuple[str, Path | None]]:
    """Where local corpus copies are looked for, in order, with a label for error messages."""
    env = os.environ.get("CHIMERA_DATA_DIR")
    return [
        ("data.data_dir", Path(cfg.data_dir).expanduser() if cfg.data_dir else None),
        ("$CHIMERA_DATA_DIR", Path(env).expanduser() if env else None),
        ("repository ../shared/data", SHARED_DATA_DIR),
    ]


def find_local(cfg: DataConfig, patterns: Sequence[str]) -> tuple[list[Path], list[str]]:
    """First glob pattern that matches under the first root that has it: (files, what was searched)."""
    searched = []
    for label, root in data_roots(cfg):
        if root is None:
            searched.append(f"{label}: not set")
            continue
        for pattern in patterns:
            hits = sorted(p for p in root.glob(pattern) if p.is_file())
            if hits:
                return hits, searched
        state = "" if root.is_dir() else " (folder does not exist)"
        searched.append(f"{label}: {root}{state}, looked for {', '.join(patterns)}")
    return [], searched


def not_found(corpus: str, split: str, searched: list[str], hub: str, hint: str = "") -> DataNotFoundError:
    lines = [f"{corpus!r} split {split!r} was not found.", f"Searched: {'; '.join(searched)}; Hugging Face Hub: {hub}.",
             "Put a local copy in a folder and point at it with --data.data_dir=/path/to/folder "
             "(or the environment variable CHIMERA_DATA_DIR).", *([hint] if hint else [])]
    return DataNotFoundError("\n".join(lines))


# The Hub is tried only when it is reachable: offline machines must fail fast, not retry.


@functools.cache
def _hub_reachable(host: str, timeout: float = 3.0) -> str | None:
    """None when a TCP connection to the Hub opens; else why not."""
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return None
    except OSError as e:
        return f"cannot reach {host}: {e}"


def hub_offline_reason() -> str | None:
    """Why the Hub must not be tried (offline flags set, or no connection), or None."""
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        if os.environ.get(var, "").strip().upper() in ("1", "ON", "YES", "TRUE"):
            return f"{var}={os.environ[var]} is set"
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    return _hub_reachable(host)


def hub_column(corpus: str, split: str, searched: list[str], repo: str, config: str | None, hub_split: str,
               column: str, hint: str = "") -> Source:
    """A text column of a Hub dataset split, one row a document. An unreachable Hub is a DataNotFoundError
    now; a failed download is one when the source is read."""
    reason = hub_offline_reason()
    if reason:
        raise not_found(corpus, split, searched, f"skipped ({reason})", hint)

    def read() -> list[str]:
        try:
            import datasets

            return list(datasets.load_dataset(repo, config, split=hub_split)[column])
        except Exception as e:  # noqa: BLE001 - whatever the hub client raised, report it clearly
            why = f"datasets.load_dataset({repo!r}, {config!r}) failed: {type(e).__name__}: {e}"
            raise not_found(corpus, split, searched, why, hint) from e

    return Source({"hub": repo, "config": config, "split": hub_split, "column": column}, read)
