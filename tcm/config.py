"""Typed, flat, frozen configuration of the TCM detector.

Every default carries its reason. `build.py` is the one place that turns these into objects, by a `match`
on `head.kind` (no string registries). Production defaults are the paper's (CLIP RN50, 640 crops, 4 prompts);
`DetectorConfig.tiny()` is the scaled-down model used by tests and the demo.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal


@dataclass(frozen=True)
class ClipConfig:
    """CLIP towers (open_clip ModifiedResNet + text transformer). Defaults = OpenAI RN50."""

    embed_dim: int = 1024  # RN50 joint embedding width (attention-pool output)
    vision_layers: tuple[int, int, int, int] = (3, 4, 6, 3)  # RN50 stage depths
    vision_width: int = 64  # RN50 stem width; stages give 4/8/16/32 x width channels
    vision_heads: int = 32  # attention-pool heads (open_clip: width * 32 // 64)
    pretrain_image_size: int = 224  # grid of the pretrained positional embedding (7x7); interpolated per input
    text_context_length: int = 77  # CLIP's positional table; truncated to the prompt length at build
    text_vocab_size: int = 49408  # CLIP BPE vocabulary
    text_width: int = 512  # RN50 text transformer width
    text_heads: int = 8
    text_layers: int = 12
    quick_gelu: bool = True  # OpenAI's RN50 text tower was trained with QuickGELU (open_clip's RN50-quickgelu)
    weights: str | None = None  # local path or s3:// URI of RN50.pt / open_clip state dict; None = random (warns)


@dataclass(frozen=True)
class TCMConfig:
    """The TCM parts on top of CLIP. `enabled=False` is the baseline switch (image encoder + neck + head)."""

    enabled: bool = True
    num_prompts: int = 4  # learnable context tokens K; paper default 4, 18 and 32 also studied
    class_prompt: str = "the pixels of many arbitrary-shape text instances."  # released code's prompt
    prompt_length: int = 14  # tokens for SOT + class prompt + EOT (released code); total = K + this
    language_prompt_generator: bool = True  # global image vector -> cue added to every prompt token
    visual_prompt_generator: bool = True  # pixels attend to the text embedding: I_hat = I + gamma * I_tilde
    context_decoder: bool = True  # text attends to the visual context (DenseCLIP; active in released configs)
    decoder_width: int = 256  # VPG / context decoder: 3 layers, 4 heads, width 256, FFN 1024 (paper)
    decoder_heads: int = 4
    decoder_layers: int = 3
    decoder_dropout: float = 0.1
    gamma_init: float = 1e-3  # vis_gamma / context gamma start near identity (released code)
    tau: float = 0.07  # temperature of the matching logits P / tau
    aux_loss_weight: float = 1.0  # lambda of the instance-language matching loss (paper)
    # learnable contexts' init: released ocrclip.py uses torch's trunc_normal_ defaults (std 1, cut at +-2). The
    # tiny preset uses 0.02 (its random text tower's token embeddings are N(0, 0.02)): at std 1 the contexts swamp
    # the prompt and tiny TCM-DB from random weights sat on its loss plateau (held-out hmean 0.0 vs 0.545 after
    # 384 steps of the learning test's recipe, deterministic data, tests/pipelines/test_train_learning.py)
    context_init_std: float = 1.0


@dataclass(frozen=True)
class DBHeadConfig:
    """DBNet: FPN-C neck, probability + threshold branches, differentiable binarisation."""

    kind: Literal["db"] = "db"
    neck_channels: int = 256  # FPN-C lateral width; 4 x (neck_channels // 4) concatenated at stride 4
    k: float = 50.0  # binarisation steepness (DB paper)
    shrink_ratio: float = 0.4  # r in D = A (1 - r^2) / L (DB paper)
    thresh_min: float = 0.3  # threshold-map target range (DB code)
    thresh_max: float = 0.7
    min_text_size: int = 8  # min-area-rect short side below which an instance is ignored (mmocr)
    weight_prob: float = 5.0  # loss weights of the released code: 5 BCE-OHEM + 10 L1 + 1 Dice
    weight_thr: float = 10.0
    weight_bin: float = 1.0
    ohem_ratio: float = 3.0  # negatives : positives in the balanced BCE
    mode: Literal["quad", "poly"] = "quad"  # decode output; poly for curved text (Total-Text, CTW1500)
    bin_thresh: float = 0.3  # binarise P > 0.3 before contours (DB)
    box_thresh: float = 0.3  # min mean P inside a box; low because evaluation sweeps thresholds (mmocr)
    unclip_ratio: float = 1.5  # quad-mode dilation (DB); poly mode uses poly_unclip_ratio
    poly_unclip_ratio: float = 2.0  # DB official poly mode
    max_candidates: int = 1000  # DB experiment yamls
    min_size: int = 3  # min short side of a candidate (DB)
    # approxPolyDP epsilon / arc length: poly mode of the "db" path (DB official and DBNet++ use 0.002; mmocr 1.x
    # DBNet 0.01 loses curvature on long curved lines); both modes of the "tcm" path (0 = the contour as is)
    poly_epsilon_ratio: float = 0.002
    # "db": DB official's representer (quad: minAreaRect first, score the rectangle, unclip it; poly: as below).
    # "tcm": the released TCM DBParam/DBVisPostprocessor (ocrclip/ocrclip/postprocessor.py): approxPolyDP first
    # (poly_epsilon_ratio), score inside that polygon, unclip the polygon (unclip_ratio in quad mode,
    # poly_unclip_ratio in poly mode), then quad = its minAreaRect kept if the short side > min_text_width;
    # poly = the unclipped polygon (no width filter: filter_min_text_poly is off in every released config)
    postprocess: Literal["db", "tcm"] = "db"
    min_text_width: float = 5.0  # "tcm" path: min short side after unclip (released default; IC15 2, TD500 3)
    # added by the DB codec: how a kernel is dilated back. "ratio" = DB's D' = A' * unclip_ratio / L', calibrated on
    # trained networks; "inverse" solves the D that undoes the r = shrink_ratio shrink (exact for rectangles,
    # tcm.geometry.inverse_shrink_distance): for `tcm check-targets`, since a constant ratio inverts the shrink
    # for one aspect ratio only (1.45 for a square, 3.05 at 8:1)
    unclip: Literal["ratio", "inverse"] = "ratio"


@dataclass(frozen=True)
class PANHeadConfig:
    """PAN: FPEM x2 + FFM neck; text, kernel and 4-d similarity vector; pixel aggregation decode."""

    kind: Literal["pan"] = "pan"
    neck_channels: int = 128  # FPEM/FFM width (PAN paper)
    num_fpem: int = 2
    emb_dim: int = 4  # similarity vector dimension (PAN paper)
    kernel_shrink_ratio: float = 0.5  # IC15 (0.7 for CTW1500 / Total-Text)
    max_shrink_dist: int = 20  # cap on the kernel offset in pixels (mmocr / official)
    weight_text: float = 1.0
    weight_kernel: float = 0.5
    weight_emb: float = 0.25
    delta_agg: float = 0.5
    delta_dis: float = 1.5
    mode: Literal["quad", "poly"] = "quad"
    min_text_conf: float = 0.5
    min_kernel_conf: float = 0.5
    distance_thresh: float = 3.0  # embedding distance for aggregation (mmocr)
    min_area: int = 16  # pixels at output resolution
    score_thresh: float = 0.3  # low because evaluation sweeps thresholds


@dataclass(frozen=True)
class FCEHeadConfig:
    """FCENet: FPN neck at strides 8/16/32, Fourier contour embedding of degree k."""

    kind: Literal["fce"] = "fce"
    neck_channels: int = 256  # mmdet FPN width
    fourier_degree: int = 5  # k = 5 (FCENet paper)
    strides: tuple[int, int, int] = (8, 16, 32)
    level_proportion_range: tuple[tuple[float, float], ...] = ((0.0, 0.4), (0.3, 0.7), (0.6, 1.0))  # IC15/default
    resample_step: float = 4.0
    center_region_shrink_ratio: float = 0.3
    orientation_thr: float = 2.0
    num_sample: int = 50  # contour points in the regression loss
    alpha: float = 1.2  # score = TR^alpha * TCL^beta (IC15); CTW1500 uses 1.0 / 2.0
    beta: float = 1.0
    score_thresh: float = 0.3
    nms_thresh: float = 0.1
    num_reconstr_points: int = 50
    mode: Literal["quad", "poly"] = "poly"


HeadConfig = DBHeadConfig | PANHeadConfig | FCEHeadConfig


@dataclass(frozen=True)
class DetectorConfig:
    clip: ClipConfig = field(default_factory=ClipConfig)
    tcm: TCMConfig = field(default_factory=TCMConfig)
    head: HeadConfig = field(default_factory=DBHeadConfig)
    input_size: int = 640  # training crop (paper); pos-embed is interpolated for any multiple of 32
    # TCM normalises with mmocr's mean/std (RGB), not CLIP's (released pipelines)
    pixel_mean: tuple[float, float, float] = (122.67891434, 116.66876762, 104.00698793)
    pixel_std: tuple[float, float, float] = (58.395, 57.12, 57.375)

    @staticmethod
    def tiny(head: HeadConfig | None = None, **tcm_overrides) -> DetectorConfig:
        """Scaled-down towers for CPU tests and the demo: forward+backward well under a second at 64-128 px."""
        clip = ClipConfig(
            embed_dim=64,
            vision_layers=(1, 1, 1, 1),
            vision_width=8,  # stages 32/64/128/256 channels
            vision_heads=2,
            text_width=64,
            text_heads=2,
            text_layers=2,
        )
        tcm_overrides = {"context_init_std": 0.02, **tcm_overrides}  # TCMConfig.context_init_std: random towers
        tcm = TCMConfig(decoder_width=32, decoder_heads=2, decoder_layers=1, **tcm_overrides)
        # DB neck 128 (prob/thresh branches 32 wide): narrower branches of a randomly initialised model can
        # collapse to a constant map (all ReLUs dead) and stay there for hundreds of steps. At 32 they always did;
        # at 64 the learning test's recipe (448 deterministic steps) ended at held-out hmean 0.0 on the loss
        # plateau (~5.6), at 128 it passed 0.77 after 256 steps and 0.80 after 448
        head = head or DBHeadConfig(neck_channels=128)
        return DetectorConfig(clip=clip, tcm=tcm, head=head, input_size=128)

    def with_head(self, head: HeadConfig) -> DetectorConfig:
        return replace(self, head=head)
