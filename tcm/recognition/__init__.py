"""CLIP4STR scene-text recognition: a sibling model family to the TCM detector (plain PyTorch, no Ray/MLflow).
Import from the submodules (tcm.recognition.config, .build, .model, ...): the package itself imports nothing, so
configs that name `RecognizerConfig` stay light (no torch, open_clip) for the CLI.

    cfg = RecognizerConfig()                       # CLIP4STR-B; RecognizerConfig.tiny() for CPU tests
    model = build_recognizer(cfg).eval()           # cfg.weights = ViT-B-16.pt or an open_clip state dict
    logits = model(preprocess(crops, cfg))["logits"]
    texts, confidences = model.tokenizer.decode(logits)
    loss = model.loss(images, labels)["loss"]      # training; param_groups(model, cfg, lr, wd) for AdamW
"""
