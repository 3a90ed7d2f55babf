"""Analyses built on explanations: trust curves, the head atlas over a folder, comparisons."""
