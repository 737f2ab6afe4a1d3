"""minidiff's benchmarks: they measure speed, they are not timed tests.

    python benchmarks/run_all.py --quick        # the CPU subset (+ CUDA rows where a GPU is present)
    python benchmarks/bench_sampling.py --help  # each benchmark also runs on its own

Every benchmark writes benchmarks/results/NAME.md (tables) and NAME.json (the same numbers with the
machine they were measured on). Shared helpers live in common.py, model wrappers for the execution
modes (bf16 autocast, channels_last, torch.compile, CUDA graphs, and "fast" = channels_last + bf16)
in modes.py. bench_sampling.md (and summary.md, at its top) opens with the Targets table
(the speed goals: sampler overhead, the course loop, the fast mode, the GPU rows).
"""
