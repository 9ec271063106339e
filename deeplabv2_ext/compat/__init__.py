"""Drop-in replacements for other libraries' APIs, backed by deeplabv2_ext's operators.

- :mod:`deeplabv2_ext.compat.pydensecrf`: pydensecrf's two modules, ``densecrf``
  (``DenseCRF``/``DenseCRF2D``) and ``utils``, running on our permutohedral lattice (CPU or
  CUDA); its ``install()`` serves ``import pydensecrf`` to unchanged third-party code.
"""
