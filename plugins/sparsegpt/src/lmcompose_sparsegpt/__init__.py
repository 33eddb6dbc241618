"""SparseGPT (Frantar & Alistarh, ICML 2023) for lmcompose."""
