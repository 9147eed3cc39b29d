"""motion_core: MotionMatcher motion customization of text-to-video diffusion models (arXiv 2502.13234).

The library behind the app and the command line: video I/O, model loading, the motion feature extractor,
training objectives, LoRA training, DDIM inversion and sampling, LoRA files and evaluation. No UI code.
"""

__version__ = "0.1.0"
