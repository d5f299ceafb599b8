"""Algorithm registry."""
