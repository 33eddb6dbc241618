"""MQuAKE for lmcompose."""
