"""Every model family as small Equinox pytrees, built from a ModelConfig by one builder (builder.py).

- ``layers``, ``attention``, ``kv_cache``     shared building blocks; attention and its decoding cache
- ``transformer``                             the Decoder every family shares: embeddings, stack of blocks, head
- ``routing``, ``moe``, ``dispatch``, ``grouped``, ``expert_parallel``, ``expert_list``
                                              the MoE FFN: router, layer, dense / capacity / dropless dispatch,
                                              grouped matmuls, dispatch per shard, experts laid out for decoding
- ``ssm``, ``ssd``                            the selective state-space mixer and its scans
- ``time_indexed``                            one shared block across depth, modulated by t = (i + 1) / L
- ``loss``                                    per-token NLL and the fused head + cross-entropy
- ``roles``, ``params``                       a parameter's role from its name; parameter reports
- ``builder``                                 the one place config choices become modules
"""
