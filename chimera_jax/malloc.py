"""glibc malloc settings for XLA on CPU: large buffers come from one reused heap, not fresh mmaps.

XLA:CPU allocates its output and temporary buffers on every call. glibc serves any allocation over
32 MiB with a fresh ``mmap`` and unmaps it on free, so every call page-faults its large buffers (an
MoE layer's 64 MiB weight gradients, say) in again. One arena (``MALLOC_ARENA_MAX``; other threads'
arenas cannot hold large blocks and fall back to mmap), no mmap, and no trimming keep freed memory for
reuse. The cost: the process keeps its peak heap until it exits. What it buys: docs/moe.md ("Malloc
settings", measured with ``chimera-bench moe`` with and without).

glibc reads these only at start-up, so every command re-executes itself once with them
(``reexec_with_tuned_malloc``, called by ``chimera_jax.cli.entry.launch``, which ``scripts/*.py`` and the
``chimera-*`` console commands go through) and ``python -m chimera_jax.malloc CMD ...`` runs any command
with them (the Makefile's test target). ``CHIMERA_MALLOC=off`` turns both off.
"""

from __future__ import annotations

import os
import platform
import sys

TUNED = {
    "MALLOC_ARENA_MAX": "1",
    "MALLOC_MMAP_MAX_": "0",
    "MALLOC_TRIM_THRESHOLD_": str(64 << 30),
    "MALLOC_TOP_PAD_": str(1 << 30),  # grow the heap in large steps: address space, not resident memory
}


def switched_off() -> bool:
    return os.environ.get("CHIMERA_MALLOC", "").lower() == "off"


def applies() -> bool:
    """Linux with glibc, not switched off, and not already in effect."""
    if switched_off() or sys.platform != "linux" or platform.libc_ver()[0] != "glibc":
        return False
    return any(os.environ.get(k) != v for k, v in TUNED.items())


def reexec_with_tuned_malloc() -> None:
    """Restart this Python process with ``TUNED`` in its environment (same PID, same arguments).

    ``sys.orig_argv`` is the command line as the interpreter received it: ``python scripts/train.py ...``,
    ``python -m pkg ...``, or a console command's ``python .../bin/chimera-train ...`` (its shebang line), so
    the restart runs the same program.
    """
    if applies():
        os.environ.update(TUNED)
        os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])


def main(argv: list[str]) -> None:
    if not argv:
        raise SystemExit("usage: python -m chimera_jax.malloc COMMAND [ARGS ...]")
    os.execvpe(argv[0], argv, dict(os.environ) if switched_off() else {**os.environ, **TUNED})


if __name__ == "__main__":
    main(sys.argv[1:])
