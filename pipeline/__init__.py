"""SNE on Ray: predict properties of trained networks from their weights.

The library does no work at import time; heavy dependencies (ray, mlflow) are imported only by
the modules that need them.
"""
