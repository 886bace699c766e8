"""Evaluation: metrics, classical baselines, point sources, data consistency."""
