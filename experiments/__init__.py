"""STN / CoordConv classification experiments (seeds 002-004).

Run ``python -m experiments.stn_classify --help``; see experiments/RESULTS.md.
"""
