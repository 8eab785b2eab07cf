"""Prefect tasks (installed as ``repint.tasks``): one unit of work on one chunk or one centre."""
