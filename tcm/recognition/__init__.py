"""CLIP4STR scene-text recognition: a sibling model family to the TCM detector (plain PyTorch, no Ray/MLflow).

    cfg = RecognizerConfig()                       # CLIP4STR-B; RecognizerConfig.tiny() for CPU tests
    model = build_recognizer(cfg).eval()           # cfg.weights = ViT-B-16.pt or an open_clip state dict
    logits = model(preprocess(crops, cfg))["logits"]
    texts, confidences = model.tokenizer.decode(logits)
    loss = model.loss(images, labels)["loss"]      # training; param_groups(model, cfg, lr, wd) for AdamW
"""

from tcm.recognition.build import build_recognizer
from tcm.recognition.config import RecognizerConfig
from tcm.recognition.model import CLIP4STR
from tcm.recognition.optim import param_groups
from tcm.recognition.preprocess import preprocess
from tcm.recognition.tokenizer import Tokenizer

__all__ = ["CLIP4STR", "RecognizerConfig", "Tokenizer", "build_recognizer", "param_groups", "preprocess"]
