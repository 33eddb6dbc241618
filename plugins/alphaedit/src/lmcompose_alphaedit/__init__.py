"""AlphaEdit (Fang et al., ICLR 2025): null-space constrained locate-then-edit for lmcompose."""
