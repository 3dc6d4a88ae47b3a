"""Governance: the audit chain, erasure, policy checks."""
