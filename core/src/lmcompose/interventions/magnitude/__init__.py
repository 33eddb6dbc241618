"""Magnitude pruning: zero the smallest-|w| weights of each projection (Han et al. 2015).

The baseline of SparseGPT and Wanda. Unstructured: exactly round(sparsity * numel) weights
of every targeted matrix (layer-wise selection). N:M: the M - N smallest of every M
consecutive input weights of each row.
"""

from lmcompose.interventions.magnitude.intervention import Magnitude

__all__ = ["Magnitude"]
