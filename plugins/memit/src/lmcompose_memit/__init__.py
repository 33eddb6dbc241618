"""MEMIT (Meng et al., "Mass-Editing Memory in a Transformer", ICLR 2023) for lmcompose."""
