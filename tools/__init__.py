"""Development tools outside the data path: the demo, its data, and the benchmarks."""
