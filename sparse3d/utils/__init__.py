"""Utilities: argument checks, quantization, collation."""
