"""What a notebook or a report draws from a model or a run, as numpy arrays and figures.

- ``modulation``   a time-indexed model's learnt gates, SSM dynamics per depth, losses across depths
- ``expert_load``  an MoE run's per-layer expert load, from its metrics or its checkpoint, and its figure
"""
