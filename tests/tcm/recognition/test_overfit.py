"""Tiny CLIP4STR must overfit 64 rendered words on CPU: the whole path (ViT, both decoders, permutation loss,
cross-modal caption, predict-and-refine, greedy decoding) can learn, and refinement does not undo it."""

import time

import numpy as np
import pytest
import torch

from tcm.recognition.config import RecognizerConfig
from tcm.recognition.optim import param_groups
from tcm.recognition.preprocess import preprocess

from .conftest import build_quietly, random_words, render_word

NUM_WORDS = 64
BATCH = 32  # two steps per pass over the words
MAX_STEPS = 300  # reaches 1.0 at ~100 steps with these seeds (~30 s CPU); the bound leaves room for other numerics
LR = 1e-3  # encoder; decoders at 19x (the released ratio). High on purpose: overfitting from random init
EVAL_EVERY = 20


def word_accuracy(model, images, words, **kwargs) -> float:
    model.eval()
    with torch.no_grad():
        texts, _ = model.tokenizer.decode(model(images, **kwargs)["logits"])
    model.train()
    return float(np.mean([t == w for t, w in zip(texts, words, strict=True)]))  # exact, case-sensitive


@pytest.mark.slow
def test_tiny_clip4str_overfits_64_words():
    rng = np.random.default_rng(0)
    words = random_words(NUM_WORDS, rng)  # 3-8 mixed-case alphanumerics
    cfg = RecognizerConfig.tiny()
    images = preprocess([render_word(w, rng=rng) for w in words], cfg)  # (64, 3, 32, 128)
    model = build_quietly(cfg)
    groups = param_groups(model, cfg, LR, 0.0)
    optimizer = torch.optim.AdamW(groups, betas=(0.9, 0.98), eps=1e-6)  # released optimiser settings
    schedule = torch.optim.lr_scheduler.OneCycleLR(  # released schedule: one cycle, 7.5 % warm-up
        optimizer, [g["lr"] for g in groups], total_steps=MAX_STEPS, pct_start=0.075, cycle_momentum=False
    )
    perms = torch.Generator().manual_seed(0)
    assert word_accuracy(model, images, words) == 0.0  # untrained
    accuracy, first_loss, step = 0.0, None, 0
    cpu = time.process_time()
    for step in range(1, MAX_STEPS + 1):
        start = (step - 1) * BATCH % NUM_WORDS
        losses = model.loss(images[start : start + BATCH], words[start : start + BATCH], generator=perms)
        optimizer.zero_grad()
        losses["loss"].backward()
        optimizer.step()
        schedule.step()
        first_loss = first_loss if first_loss is not None else losses["loss"].item()
        if step % EVAL_EVERY == 0:
            accuracy = word_accuracy(model, images, words)
            if accuracy == 1.0:
                break
    print(
        f"word accuracy {accuracy:.3f} after {step} steps ({time.process_time() - cpu:.0f} CPU s);"
        f" loss {first_loss:.2f} -> {losses['loss'].item():.3f}"
    )
    assert accuracy == 1.0, f"word accuracy {accuracy:.3f} after {MAX_STEPS} steps"
    assert word_accuracy(model, images, words, refine_iters=0) <= accuracy  # refinement does not lower it
    assert word_accuracy(model, images, words, early_stop=False) == 1.0  # fixed-step decoding agrees
