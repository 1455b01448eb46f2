"""ctseg: GAN segmentors trained from slice stores (commands arrive with the training issue)."""
