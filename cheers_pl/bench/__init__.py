"""Benchmark suite (`python -m cheers_pl bench`): the paper's efficiency claims and our own speed, as ratios.

Sections (one module each): token compression, sampling (prompt-KV reuse), data pipeline, training throughput / MFU,
scaling; each is a function returning a dict of measured medians. `cheers_pl.bench.run.run(BenchArgs)` runs them and
`cheers_pl.bench.report.write_report` writes `bench.json` + `bench.md`.
"""
