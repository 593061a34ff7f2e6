"""Analyzers: they never change a model."""
