"""Training: datasets and augmentation, architectures and pretrained weights, checkpoints,
training, evaluation and interpretation of the classifiers."""
