"""zsRE for lmcompose."""
