"""Drop-in replacements for other libraries' APIs, backed by deeplabv2_ext's operators.

- :mod:`deeplabv2_ext.compat.pydensecrf`: pydensecrf's ``DenseCRF``/``DenseCRF2D`` and its
  ``utils`` functions, running on our permutohedral lattice (CPU or CUDA).
"""
