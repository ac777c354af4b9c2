"""Typed, flat, frozen configuration of the CLIP4STR recogniser (reference/clip4str.md).

Every default carries its reason; production defaults are CLIP4STR-B as released ([C] `configs/model/vl4str.yaml`,
`configs/experiment/vl4str.yaml`). `RecognizerConfig.tiny()` is the scaled-down model of CPU tests and the demo.
`tcm/recognition/build.py` is the one place that turns a config into objects.
"""

from __future__ import annotations

from dataclasses import dataclass

from tcm.recognition.charset import CHARSET_36, CHARSET_94, MAX_LABEL_LENGTH

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)  # CLIP's image statistics (RGB, 0..1 scale)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class RecognizerConfig:
    """CLIP ViT image encoder + PARSeq decoder (visual branch) + CLIP text encoder and a second decoder (cross-modal
    branch). The decoders' width is `embed_dim` (CLIP4STR decodes the projected 512-d features, `use_share_dim`)."""

    # --- CLIP towers (open_clip names; OpenAI ViT-B/16) ---
    embed_dim: int = 512  # ViT-B/16 joint width: image tokens @ proj, text tokens @ text_projection, decoder d_model
    image_size: tuple[int, int] = (224, 224)  # (H, W); every CLIP4STR experiment stretches crops to 224x224
    patch_size: tuple[int, int] = (16, 16)  # ViT-B/16: 14x14 patches + CLS = 197 memory tokens
    vision_width: int = 768  # ViT-B
    vision_layers: int = 12
    vision_head_width: int = 64  # open_clip: heads = width / head_width = 12
    text_context_length: int = 16  # vl4str.yaml `context_length`; CLIP's 77-row table is *sliced* to it at load
    text_vocab_size: int = 49408  # CLIP BPE (SOT 49406, EOT 49407)
    text_width: int = 512
    text_heads: int = 8
    text_layers: int = 12
    # token/position embeddings + the bottom N text blocks frozen (requires_grad False, eval mode): vl4str.yaml
    # text_freeze_nlayer 6. -1 = nothing frozen; >= text_layers = the whole text tower frozen (as released)
    text_freeze_layers: int = 6
    quick_gelu: bool = True  # OpenAI CLIP was trained with QuickGELU; CLIP4STR uses it for every checkpoint
    weights: str | None = None  # path / s3:// URI of ViT-B-16.pt (OpenAI TorchScript) or an open_clip state dict

    # --- decoders (both branches: same class, separate weights) ---
    decoder_depth: int = 1  # vl4str.yaml dec_depth
    decoder_heads: int = 8  # dec_num_heads
    decoder_mlp_ratio: int = 4  # dec_mlp_ratio
    decoder_dropout: float = 0.1  # `dropout` (embeddings, attention, MLP)

    # --- labels and decoding ---
    charset: str = CHARSET_94  # charset_train in the released order (fixes the token ids)
    cross_charset: str = CHARSET_36  # what the CLIP text encoder reads: the visual prediction, lowercased alnum
    max_label_length: int = MAX_LABEL_LENGTH  # 25 -> 26 position queries (one more for [E])
    perm_num: int = 6  # K permutations per step: canonical, reverse, 2 random pairs (vl4str.yaml)
    perm_forward: bool = True  # the canonical left-to-right order is always one of them
    perm_mirrored: bool = True  # each permutation comes with its flip
    decode_ar: bool = True  # autoregressive predict (False: one non-autoregressive pass)
    refine_iters: int = 1  # cloze refinement passes after the prediction
    cross_modal: bool = True  # False = the visual branch alone (CLIP4STR's ablation baseline)
    cross_loss_weight: float = 1.0  # cross_loss_w

    # --- optimisation ---
    decoder_lr_factor: float = 19.0  # coef_lr: every non-CLIP parameter at 19x the encoder learning rate

    # --- input ---
    pixel_mean: tuple[float, float, float] = OPENAI_MEAN  # openai_meanstd: true (train and val)
    pixel_std: tuple[float, float, float] = OPENAI_STD

    def __post_init__(self) -> None:
        problems = []
        for i in range(2):
            if self.image_size[i] % self.patch_size[i]:
                problems.append(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
                break
        if self.vision_width % self.vision_head_width:
            problems.append(f"vision_width {self.vision_width} is not a multiple of vision_head_width")
        if self.embed_dim % self.decoder_heads:
            problems.append(f"embed_dim {self.embed_dim} (decoder width) is not a multiple of decoder_heads")
        if self.text_freeze_layers < -1:
            problems.append(f"text_freeze_layers {self.text_freeze_layers} must be >= -1 (-1 = nothing frozen)")
        if self.perm_num < 1 or (self.perm_mirrored and self.perm_num % 2):
            problems.append(f"perm_num {self.perm_num} must be >= 1, and even when perm_mirrored")
        if not 1 <= self.max_label_length:
            problems.append(f"max_label_length {self.max_label_length} must be >= 1")
        if self.refine_iters < 0 or self.decoder_depth < 1:
            problems.append("refine_iters must be >= 0 and decoder_depth >= 1")
        if len(set(self.charset)) != len(self.charset):
            problems.append("charset has repeated characters")
        if problems:
            raise ValueError("RecognizerConfig: " + "; ".join(problems))

    @property
    def num_positions(self) -> int:
        """Position queries T: max_label_length characters + [E]."""
        return self.max_label_length + 1

    @property
    def num_memory_tokens(self) -> int:
        """Image tokens after the ViT: CLS + (H / ph) x (W / pw) patches (197 at 224 / 16)."""
        return 1 + (self.image_size[0] // self.patch_size[0]) * (self.image_size[1] // self.patch_size[1])

    @staticmethod
    def tiny(**overrides) -> RecognizerConfig:
        """Scaled-down towers for CPU tests and the demo: 32x128 crops (the PARSeq input), 8x8 patches (4 x 16 grid,
        one column every 8 px so neighbouring characters land in different tokens), 2-layer ViT width 64, 2-layer
        text tower width 32 (its bottom layer frozen: half, as 6 of 12), decoders width 64; 1.9 M parameters, 1.6 M
        of them the frozen BPE token embedding. A training step on 32 words takes ~0.35 s of one CPU core."""
        values = dict(
            embed_dim=64,
            image_size=(32, 128),
            patch_size=(8, 8),
            vision_width=64,
            vision_layers=2,
            vision_head_width=32,
            text_width=32,
            text_heads=2,
            text_layers=2,
            text_freeze_layers=1,
            decoder_heads=2,
        )
        values.update(overrides)
        return RecognizerConfig(**values)
