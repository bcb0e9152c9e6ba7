"""Performance benchmarks (see bench/README.md). Not tests: nothing here asserts on timings."""
