"""Model handles, architecture specs, loading and tiny test models."""

from lmcompose.models.arch import ArchSpec, decoder_layers, linear_modules, weight_matrix

__all__ = ["ArchSpec", "decoder_layers", "linear_modules", "weight_matrix"]
