"""What comes in: images decoded and checked, the model's resize and crop, class names and typed
labels."""
