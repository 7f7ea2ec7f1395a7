"""Development tools: a real control plane and helpers for tests and demos."""
