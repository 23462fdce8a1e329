"""Streaming ingestion worker."""
