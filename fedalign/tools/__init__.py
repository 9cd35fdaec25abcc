"""Operational helpers (process management for Flower's local SuperLink)."""
