"""The mode world (SPEC section 13): a low-dimensional conditional flow world where structure (which mode a sample
lands in, decided early in sampling) and detail (where inside the mode, refined late) separate and are measured
exactly. world.py (data, conditions, splits), model.py (the velocity MLP and its pretraining), rewards.py
(structure, detail, sum), metrics.py, train.py (fine-tuning through METHODS[name].step), jobs.py, stats.py,
demo.py and report.py (`leapalign demo world=modes`)."""
