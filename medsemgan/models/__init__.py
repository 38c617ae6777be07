"""Networks: joint image-label generator, image and joint discriminators, encoder."""
