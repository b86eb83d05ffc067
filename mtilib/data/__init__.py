"""Data layer: DCE-MRI physics, the enhancement target, the seeded liver phantom and the on-disk layout.

Submodules (import the one you need; this package imports nothing heavy on its own):

- :mod:`mtilib.data.physics`      Parker AIF, portal venous input, dual-input extended Tofts, SPGR signal
- :mod:`mtilib.data.enhancement`  ``relative_enhancement`` (numpy and torch, binary or soft masks)
- :mod:`mtilib.data.phantom`      ``PhantomConfig``, ``generate_case``, ``generate_cases``
- :mod:`mtilib.data.io`           nnU-Net-compatible layout, ``dataset.json``, validation (``DatasetError``)
"""
