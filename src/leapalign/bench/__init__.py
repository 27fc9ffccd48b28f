"""`leapalign bench`: memory and time per reward-gradient method.

measure.py (the measuring core: cases, timing, peak memory, FLOPs), workloads.py (the models and rewards a case
runs on), runner.py (one case per child process, environment record), pairs.py (the pairs-per-rollout study),
report.py (tables and plots).
"""
