"""Experiment orchestration at toy scale (tools/tiny_pipeline.py, tools/toy_reproduction.py)."""
