"""The benchmark harness behind ``einattn bench``, one module per concept.

- ``harness``: ``BenchOptions`` and ``run_bench``: inputs, compile, timing, output checks.
- ``peers``: SDPA, FlexAttention and eager PyTorch forms of the zoo variants.
- ``flops``: useful FLOPs from the kernel plan (visible-pair fractions of masked passes), peak.
- ``timing``: interleaved round-robin timing, thread-pool spin after a call.
- ``memory``: ``--memory``, peak RSS growth of one call in a fresh process.

Nothing is imported here, so ``import einattn.bench`` stays cheap; import the modules.
"""
