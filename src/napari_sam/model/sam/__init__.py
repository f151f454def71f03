"""SAM 1 in pure PyTorch: image encoders (ViT-B/L/H, TinyViT), prompt encoder, mask decoder."""
