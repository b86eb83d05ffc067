"""mtilib: MTI-Net for liver tumour DCE-MRI and the course that teaches it.

Layers (lower never import higher):
``constants``/``runtime`` -> ``data`` -> ``models`` -> ``losses`` -> ``metrics`` -> ``train`` -> ``viz``
-> ``course``/``bench``/``results`` -> ``cli``.
"""

__version__ = "0.1.0"
