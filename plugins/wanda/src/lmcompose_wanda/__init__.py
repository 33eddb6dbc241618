"""Wanda (Sun et al., ICLR 2024) for lmcompose."""
