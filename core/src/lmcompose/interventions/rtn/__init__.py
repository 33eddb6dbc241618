"""Round-to-nearest (RTN) weight quantization on the shared GPTQ grid.

Each targeted matrix is split into groups of ``group_size`` input columns; each (row,
group) gets a min/max (or symmetric) scale and zero point, and every weight is rounded to
the nearest grid point. Weights keep the dequantized float values; the grid is stored in
the model's compression state so project() can snap later changes back onto it.
"""

from lmcompose.interventions.rtn.intervention import RTN

__all__ = ["RTN"]
