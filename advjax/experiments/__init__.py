"""Experiments run by ``launch/main.py --mode analyze``: orchestration over advjax.analysis."""
