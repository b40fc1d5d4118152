"""Clickstream on AWS: a Segment-compatible clickstream pipeline."""

__version__ = "0.1.0"
