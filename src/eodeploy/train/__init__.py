"""Training patch classifiers with PyTorch (the ``train`` extra)."""
