"""Training loops: semi-supervised GAN, encoder, supervised U-Net baseline."""
