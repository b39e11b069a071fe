"""Per-modality transforms in torch/numpy/PIL (no torchvision/torchaudio); permute.py is shared by all."""
