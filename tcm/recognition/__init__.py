"""CLIP4STR scene-text recognition: a sibling model family to the TCM detector (plain PyTorch, no Ray/MLflow)."""
