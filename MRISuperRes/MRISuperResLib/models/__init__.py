"""2D super-resolution networks (`architectures`, registered by name; needs torch) and the model registry
that `models.json` describes (`registry`; reading it needs no torch)."""
