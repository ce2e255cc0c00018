"""The one error type every command reports without a traceback, in a module that imports nothing, so that any
module (the config, the data, checkpoints, the HF bridge) can raise it."""


class UserError(Exception):
    """An error the user can fix from its message alone (a bad flag or value, a missing run, step or corpus).
    Every command prints it as one ``error: ...`` line, without a traceback, and exits with ``status``
    (chimera_jax/cli/entry.py)."""

    status = 2  # a subclass that a script should tell apart has its own (training diverged: 3)
