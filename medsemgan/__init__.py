"""medsemgan: semi-supervised liver segmentation in CT and MRI with a joint image-label StyleGAN2.

Layout (data flows one way): ``data`` -> ``models``/``ops`` -> ``training`` -> ``inference``
-> ``evaluation``; ``cli`` and ``bundles/`` only assemble these.
"""

__version__ = "0.1.0"
