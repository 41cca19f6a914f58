"""Typed schemas for every config group under conf/ (one file per group)."""
