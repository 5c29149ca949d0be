"""STN / CoordConv classification experiments on distorted digits.

Run ``python -m experiments.stn_classify --help``; see experiments/RESULTS.md.
"""
