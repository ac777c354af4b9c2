"""CLIP4STR: CLIP ViT image encoder -> visual PARSeq decoder; CLIP text encoder over the visual prediction ->
cross-modal PARSeq decoder over [image tokens (detached), text tokens] (reference/clip4str.md §1-5).

One forward contract: `model(images)` decodes (predict-and-refine) and returns named logits; training is the
explicit `model.loss(images, labels)`; strings come from `model.tokenizer.decode(outputs["logits"])`.

Shapes: B batch, N memory tokens (197 at ViT-B/16 224x224, 65 tiny), Lc text context (16), E width (512 / tiny 64),
T decoding positions (26), C classes (95 = [E] + 94 characters).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tcm.recognition.charset import CharsetAdapter
from tcm.recognition.config import RecognizerConfig
from tcm.recognition.decoder import (
    PARSeqDecoder,
    causal_mask,
    cloze_query_mask,
    gen_tgt_perms,
    generate_attn_masks,
)
from tcm.recognition.encoder import ImageEncoder, TextEncoder, prediction_tokens
from tcm.recognition.tokenizer import Tokenizer


class CLIP4STR(nn.Module):
    """forward(images (B, 3, H, W) normalised, H x W = cfg.image_size) -> dict:
    - `visual_logits` (B, T', C): the visual branch after refinement;
    - `cross_logits` (B, T', C): the cross-modal branch (only when it is on);
    - `logits` (B, T', C): the final prediction = cross_logits (visual_logits with the cross branch off).
    T' = max_length + 1 = 26 with refinement or in NAR mode; without refinement the AR length (<= 26; exactly 26
    with `early_stop=False`). ViT-B/16: C = 95; tiny: C = 95 (the charset fixes C, not the size).

    Call `eval()` first for inference (dropout). `early_stop=False` runs every AR step (no data-dependent exit),
    the form an exporter needs.
    """

    def __init__(
        self,
        cfg: RecognizerConfig,
        image_encoder: ImageEncoder,
        visual_decoder: PARSeqDecoder,
        text_encoder: TextEncoder | None = None,
        cross_decoder: PARSeqDecoder | None = None,
    ):
        super().__init__()
        if (text_encoder is None) != (cross_decoder is None):
            raise ValueError("the cross-modal branch needs both a text encoder and a cross decoder")
        self.cfg = cfg
        self.tokenizer = Tokenizer(cfg.charset)
        self.cross_adapter = CharsetAdapter(cfg.cross_charset)  # CLIP reads lowercase alphanumerics only
        self.image_encoder = image_encoder
        self.visual_decoder = visual_decoder
        self.text_encoder = text_encoder
        self.cross_decoder = cross_decoder

    @property
    def cross_modal(self) -> bool:
        return self.cross_decoder is not None

    # -------------------------------------------------------------------------------------------- building blocks

    def caption_tokens(self, visual_logits: Tensor) -> Tensor:
        """CLIP BPE ids (B, Lc) of the greedy visual prediction, cut at its first [E] and passed through the cross
        charset adapter (36 lowercase alphanumerics): the string step between the two branches (Python, no graph;
        `tcm/recognition/onnx_runtime.py` runs the same `prediction_tokens` between its two sessions)."""
        assert self.text_encoder is not None
        ids = visual_logits.detach().argmax(-1)  # (B, T)
        return prediction_tokens(ids, self.tokenizer, self.cross_adapter, self.text_encoder.context_length).to(
            visual_logits.device
        )

    def text_memory(self, tokens: Tensor, memory: Tensor) -> Tensor:
        """[memory (detached), CLIP text features of caption tokens (B, Lc)]: (B, N + Lc, E)."""
        assert self.text_encoder is not None
        text = self.text_encoder(tokens)  # (B, Lc, E)
        return torch.cat([memory.detach(), text.to(memory.dtype)], dim=1)  # (B, N + Lc, E)

    def cross_memory(self, visual_logits: Tensor, memory: Tensor) -> Tensor:
        """[memory (detached), CLIP text features of the greedy visual prediction]: (B, N + Lc, E); nothing here
        carries a gradient back to the image branch."""
        return self.text_memory(self.caption_tokens(visual_logits), memory)

    def _bos(self, B: int, device: torch.device) -> Tensor:
        return torch.full((B, 1), self.tokenizer.bos_id, dtype=torch.long, device=device)  # (B, 1)

    def _decode_ar(
        self, decoder: PARSeqDecoder, memory: Tensor, T: int, steps: int, early_stop: bool
    ) -> Tensor:
        """Greedy left-to-right decoding: step i feeds the context [B], y_1..y_i and the single query i
        (causal masks), writes argmax into the context. Returns logits (B, steps', C), steps' <= steps."""
        B = memory.shape[0]
        tgt_in = torch.full((B, T), self.tokenizer.pad_id, dtype=torch.long, device=memory.device)  # (B, T)
        tgt_in[:, 0] = self.tokenizer.bos_id
        mask = causal_mask(T, memory.device)  # (T, T)
        logits = []
        for i in range(steps):
            j = i + 1
            p_i = decoder(tgt_in[:, :j], memory, queries=decoder.pos_queries[:, i:j], query_mask=mask[i:j, :j])
            logits.append(p_i)  # (B, 1, C)
            if j < T:
                tgt_in[:, j] = p_i[:, 0].argmax(-1)
                if early_stop and bool((tgt_in == self.tokenizer.eos_id).any(-1).all()):
                    break  # every sequence has its [E]
        return torch.cat(logits, dim=1)  # (B, steps', C)

    def _refine(self, decoder: PARSeqDecoder, memory: Tensor, previous: Tensor, T: int) -> Tensor:
        """One cloze pass: context [B] + argmax(previous[:, :-1]) with tokens from the first [E] on padded out;
        every query i sees all context characters except its own. Returns (B, T, C)."""
        B = memory.shape[0]
        ctx = torch.cat([self._bos(B, memory.device), previous[:, :-1].argmax(-1)], dim=1)  # (B, L)
        L = ctx.shape[1]
        padding = (ctx == self.tokenizer.eos_id).long().cumsum(-1) > 0  # (B, L): the first [E] and after (long: ONNX CumSum has no bool)
        return decoder(
            ctx,
            memory,
            queries=decoder.pos_queries[:, :T],
            query_mask=cloze_query_mask(T, L, memory.device),
            content_mask=causal_mask(L, memory.device),
            padding_mask=padding,
        )

    # ------------------------------------------------------------------------------------------------- inference

    def forward(
        self,
        images: Tensor,
        *,
        max_length: int | None = None,
        early_stop: bool = True,
        refine_iters: int | None = None,
    ) -> dict[str, Tensor]:
        """max_length: decode at most this many characters (default and cap: cfg.max_label_length); early_stop:
        stop the AR loop once every sequence has its [E]; refine_iters: override cfg.refine_iters."""
        cfg = self.cfg
        refine_iters = cfg.refine_iters if refine_iters is None else refine_iters
        max_length = cfg.max_label_length if max_length is None else min(max_length, cfg.max_label_length)
        T = max_length + 1  # + [E]
        memory = self.image_encoder(images)  # (B, N, E)
        stages = self.predict_visual(memory, T, early_stop, refine_iters)
        outputs = {"visual_logits": stages[-1]}
        if self.cross_decoder is not None:
            tokens = torch.stack([self.caption_tokens(v) for v in stages], dim=1)  # (B, S, Lc): the string step
            outputs["cross_logits"] = self.predict_cross(memory, tokens, T, steps=stages[0].shape[1])
        outputs["logits"] = outputs.get("cross_logits", outputs["visual_logits"])
        return outputs

    def predict_visual(self, memory: Tensor, T: int, early_stop: bool, refine_iters: int) -> list[Tensor]:
        """The visual branch: [the prediction (AR: (B, T', C), T' <= T; NAR: (B, T, C)), then each of the
        `refine_iters` cloze refinements (B, T, C)]. It never reads the cross branch, so it runs first whole."""
        if self.cfg.decode_ar:
            stages = [self._decode_ar(self.visual_decoder, memory, T, T, early_stop)]  # (B, T', C)
        else:  # NAR: [B] alone as context, every position queried at once (works with the cross branch, unlike [C])
            bos = self._bos(memory.shape[0], memory.device)  # (B, 1)
            stages = [self.visual_decoder(bos, memory, queries=self.visual_decoder.pos_queries[:, :T])]
        for _ in range(refine_iters):
            stages.append(self._refine(self.visual_decoder, memory, stages[-1], T))  # (B, T, C)
        return stages

    def predict_cross(self, memory: Tensor, tokens: Tensor, T: int, steps: int) -> Tensor:
        """The cross branch from the caption tokens (B, S, Lc) of the S visual stages (`caption_tokens` of each
        `predict_visual` output): the prediction over memory + text of stage 0 (AR: `steps` steps, as many as the
        visual prediction took), then one cloze refinement per later stage over its rebuilt memory. (B, T'', C)"""
        cross_mem = self.text_memory(tokens[:, 0], memory)  # (B, N + Lc, E)
        assert self.cross_decoder is not None
        if self.cfg.decode_ar:
            cross_logits = self._decode_ar(self.cross_decoder, cross_mem, T, steps, early_stop=False)
        else:
            bos = self._bos(memory.shape[0], memory.device)  # (B, 1)
            cross_logits = self.cross_decoder(bos, cross_mem, queries=self.cross_decoder.pos_queries[:, :T])
        for s in range(1, tokens.shape[1]):  # each refinement reads the memory of the refined visual prediction
            cross_mem = self.text_memory(tokens[:, s], memory)  # (B, N + Lc, E)
            cross_logits = self._refine(self.cross_decoder, cross_mem, cross_logits, T)  # (B, T, C)
        return cross_logits

    # -------------------------------------------------------------------------------------------------- training

    def loss(
        self, images: Tensor, labels: Sequence[str] | Tensor, generator: torch.Generator | None = None
    ) -> dict[str, Tensor]:
        """Permutation-LM loss over K permutations (shared by the batch, drawn with `generator`).

        labels: strings in the charset, or `tokenizer.encode(...)` ids (B, L + 2). Per permutation k:
        n_k * CE(visual) + cross_loss_weight * n_k * CE(cross), n_k = the non-padding targets; [E] targets become
        padding after the second permutation. The cross decoder reads the ground-truth context with the same masks
        and a memory rebuilt from that permutation's visual prediction. Returns `loss` (the total / sum n_k),
        `loss_visual` and `loss_cross` (each / sum n_k, unweighted; absent when the cross branch is off)."""
        cfg, tok = self.cfg, self.tokenizer
        memory = self.image_encoder(images)  # (B, N, E)
        tgt = labels.to(memory.device) if isinstance(labels, Tensor) else tok.encode(labels, memory.device)
        B, L2 = tgt.shape  # L2 = longest label + 2
        if B != memory.shape[0]:
            raise ValueError(f"{B} labels for {memory.shape[0]} images")
        num_chars = L2 - 2
        if num_chars < 1:
            raise ValueError("every label is empty (preprocess_label drops empty labels)")
        if num_chars > cfg.max_label_length:
            raise ValueError(f"a label has {num_chars} characters, more than max_label_length {cfg.max_label_length}")
        perms = gen_tgt_perms(num_chars, cfg.perm_num, cfg.perm_forward, cfg.perm_mirrored, generator)
        tgt_in, tgt_out = tgt[:, :-1], tgt[:, 1:]  # (B, L+1): without [E] slot / without [B]
        padding = (tgt_in == tok.pad_id) | (tgt_in == tok.eos_id)  # no permutation order depends on [E]
        n = int((tgt_out != tok.pad_id).sum())
        sum_visual = memory.new_zeros(())
        sum_cross = memory.new_zeros(())
        numel = 0
        for k, perm in enumerate(perms.to(memory.device)):
            content_mask, query_mask = generate_attn_masks(perm)  # (L+1, L+1) each
            masks = dict(query_mask=query_mask, content_mask=content_mask, padding_mask=padding)
            visual = self.visual_decoder(tgt_in, memory, **masks)  # (B, L+1, C)
            sum_visual = sum_visual + n * F.cross_entropy(visual.flatten(0, 1), tgt_out.flatten(), ignore_index=tok.pad_id)
            if self.cross_decoder is not None:
                cross = self.cross_decoder(tgt_in, self.cross_memory(visual, memory), **masks)  # GT context
                sum_cross = sum_cross + n * F.cross_entropy(
                    cross.flatten(0, 1), tgt_out.flatten(), ignore_index=tok.pad_id
                )
            numel += n
            if k == 1:  # [E] is learnt from the canonical and the reverse order only
                tgt_out = torch.where(tgt_out == tok.eos_id, tok.pad_id, tgt_out)
                n = int((tgt_out != tok.pad_id).sum())
        parts = {"loss_visual": sum_visual / numel}
        total = parts["loss_visual"]
        if self.cross_decoder is not None:
            parts["loss_cross"] = sum_cross / numel
            total = total + cfg.cross_loss_weight * parts["loss_cross"]
        return {"loss": total, **parts}
