"""Training: `imsm train`, a plain PyTorch loop under Hugging Face Accelerate."""
