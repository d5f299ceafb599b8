"""The engine: every algorithm, model and dataset; CUDA when present, CPU otherwise."""
