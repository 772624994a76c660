"""absl entrypoints: one per paper, the reproduction suite and benchmarks."""
