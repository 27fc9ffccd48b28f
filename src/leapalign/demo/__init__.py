"""`leapalign demo`: the ShapesWorld comparison of LeapAlign and the baselines.

run.py (settings, training and evaluation of every method and seed), report.py (report.md, curves, grids).
"""
