"""Experiment tools: the frame feeder (edgelab-feeder) and the Prometheus-to-dataset
extractor (edgelab-extract). docs/experiments.md describes both."""
