"""Test helpers: closed-form velocity fields, tiny random pipelines and rewards built in memory, shared checks."""
