"""Prefect flows that compose the stages in ``stages/``: launching, caching, tracking."""
