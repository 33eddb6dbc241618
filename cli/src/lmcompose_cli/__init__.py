"""The lmcompose command line."""
