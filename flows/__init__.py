"""Prefect flows (installed as ``repint.flows``)."""

from repint.flows.pipeline import boundaries_flow, evaluate_flow, ingest_flow, interpret_flow, pipeline

__all__ = ["boundaries_flow", "evaluate_flow", "ingest_flow", "interpret_flow", "pipeline"]
