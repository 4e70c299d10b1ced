"""Benchmark machinery shared by bench/bench_moe.py and `kt-moe demo`: named layer shapes, the
inputs of one problem with its fp32 reference, the cases (torch baselines and kt-moe methods)
and the timing / accuracy metrics."""
