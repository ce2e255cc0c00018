"""The one way in for every command: ``scripts/NAME.py`` and the ``chimera-NAME`` console commands.

``launch`` re-executes the process with the tuned malloc settings (chimera_jax/malloc.py) before the
command's module, and so JAX, is imported, then runs the command's ``main(argv)``. An error the user can fix
(a ``UserError``: a bad flag or config, a missing run, step or corpus) ends as one ``error: ...`` line on stderr
and exit status 2 (3: training diverged, a non-finite loss); ``--debug``, anywhere on the command line, shows the
traceback instead. ``--help`` prints the command's usage above the flags its parser lists: its module's docstring,
or its ``usage(argv)`` where the arguments pick whose (``chimera-bench NAME --help``: that bench's alone).
"""

from __future__ import annotations

import importlib
import logging
import sys
from pathlib import Path

from chimera_jax.config import one_line
from chimera_jax.errors import UserError
from chimera_jax.malloc import reexec_with_tuned_malloc
from chimera_jax.train.interrupt import Interrupted


def launch(command: str) -> None:
    """Run ``chimera_jax.cli.<command>.main`` on this process's arguments."""
    reexec_with_tuned_malloc()  # glibc reads its settings at start-up: see chimera_jax/malloc.py
    argv = [arg for arg in sys.argv[1:] if arg != "--debug"]
    # Our progress messages at INFO; libraries (Orbax logs every file it writes at INFO) only from WARNING.
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("chimera_jax").setLevel(logging.INFO)
    module = importlib.import_module(f"chimera_jax.cli.{command}")
    if "--help" in argv or "-h" in argv:
        # the usage and examples (a command with subcommands picks whose); the parser lists every flag after it
        print(module.usage(argv) if hasattr(module, "usage") else module.__doc__)
    try:
        module.main(argv)
    except UserError as err:
        if "--debug" in sys.argv:
            raise
        print(f"error: {one_line(err)}", file=sys.stderr)
        raise SystemExit(err.status) from None
    except Interrupted as err:  # Ctrl-C or SIGTERM: training saved its last step and said so (train/interrupt.py)
        raise SystemExit(err.status) from None
    except KeyboardInterrupt:  # Ctrl-C anywhere else (loading data, evaluating): nothing to save, no traceback
        if "--debug" in sys.argv:
            raise
        print("interrupted", file=sys.stderr)
        raise SystemExit(130) from None


def console() -> None:
    """The ``chimera-NAME`` console commands (pyproject.toml): the program's name says which command."""
    launch(Path(sys.argv[0]).stem.removeprefix("chimera-").replace("-", "_"))
