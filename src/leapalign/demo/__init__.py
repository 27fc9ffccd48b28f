"""`leapalign demo`: the ShapesWorld comparison of LeapAlign and the baselines.

run.py (settings, the protocol's phases), protocol.py (caption sets, lr choice, paired bootstrap, reach),
parallel.py (one job: train + evaluate; the worker pool), analysis.py (layout change, displacement, update
steps), report.py (report.json summary, report.md, plots), grids.py (per-category sample grids).
"""
