"""Downstream tasks' data: the synthetic world's task generators (exact ground truth) and their sources.

Each task's generator lives in its own module here (retrieval with image ids, NLVR2 statements,
SNLI-VE hypotheses, referring expressions, captions, visual questions) and is registered as a data
source like any other (vlp_jax/registry.py SOURCES).
"""
