"""Enrichers: per-flow TCP statistics for ongoing fireflies and metrics."""
