"""Benchmarks; the first word says which (``chimera-bench NAME --help`` for its flags).

    chimera-bench inference [--quick] [--presets dense moe moe_e4 ti_ssm] [--json FILE] ...
        decoding: prefill and decode tokens/s, cached and recomputed, against transformers' generate()
        (chimera_jax/bench/inference.py)
    chimera-bench train [--quick] [--presets standard ti_ssm ...] [--repeats N] [--steps N] [--json FILE] ...
        training: compile time, step time, tokens/s, memory, FLOPs and MFU, against GPT2LMHeadModel in torch
        (chimera_jax/bench/train.py)
    chimera-bench scan [--batch 8 --seq-len 128 --d-inner 512 --state 16] [--chunks 4 8 16 32 64] [--json FILE]
        the selective scan alone, forward + backward, every way it runs (chimera_jax/bench/scan.py)
    chimera-bench moe [--quick] [--skip-train] [--skip-layers] [--cpu-time] [--trace DIR] [--json FILE] ...
        the MoE dispatches, one layer forward + backward, and an MoE train step against dense
        (chimera_jax/bench/moe.py)
    chimera-bench depth [--presets ti_ssm ti_mlp] [--low 3 --high 12] [--steps 40] [--quick] [--json FILE]
        a time-indexed train step at drawn depths: one masked program against a program per depth
        (chimera_jax/bench/depth.py)
    python scripts/bench.py train --quick --json /tmp/train.json   # the same, as a script

From Python: ``chimera_jax.bench.NAME.main(argv)`` prints the same report and returns every figure as a dict.
"""

BENCHES = ("inference", "train", "scan", "moe", "depth")  # chimera-bench NAME: the module chimera_jax.bench.NAME
