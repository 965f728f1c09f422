"""The terminal daemon: per-reader tap pipelines for bus validators, library gates and pharmacy POS."""
