"""Studies: one comparison (arms x seeds, the same data and budget) from a YAML file, with a report.

- ``spec``     the study file's dataclasses, loading, and each arm's run config
- ``runner``   arms x seeds in sequence, resumable, each run's metrics and extra evaluations
- ``stats``    mean, spread and paired 95% intervals over seeds
- ``report``   results.json and report.md
- ``plots``    the PNGs
"""
