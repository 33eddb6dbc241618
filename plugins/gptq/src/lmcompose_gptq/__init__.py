"""GPTQ (Frantar et al., ICLR 2023) for lmcompose."""
