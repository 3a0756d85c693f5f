"""The demo and the benchmarks: programs that run the pipeline, not parts of it."""
