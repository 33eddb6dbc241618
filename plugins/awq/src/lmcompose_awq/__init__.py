"""AWQ (Lin et al., MLSys 2024) for lmcompose."""
