"""Conversion between protos and domain values."""
