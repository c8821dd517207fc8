"""Integrations with model frameworks, each in its own module (imported on demand)."""
