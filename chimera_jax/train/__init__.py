"""Training: a run config -> a jitted step -> a resumable loop with validation, metrics and Orbax checkpoints.

- ``optimizer``, ``state``, ``step``     the optax chain, TrainerState, the jitted step (losses: models/loss.py)
- ``loop``                               batches, step, logging, validation, checkpoints, stops
- ``checkpoint``                         Orbax save and restore; a run's model and config read back
- ``metrics``, ``interrupt``             JSONL + TensorBoard sinks; Ctrl-C / SIGTERM saving the last step
- ``mesh``, ``distributed``              where every array lives on a device mesh; several processes as one run
"""
