"""`build_codec`: the numpy codec of a head config (a `match` on its kind), without importing torch: the ONNX
Runtime spotter decodes with it. `tcm.build.build_codec` is this function."""

from __future__ import annotations

from typing import Any

from tcm.config import DBHeadConfig, FCEHeadConfig, HeadConfig, PANHeadConfig


def build_codec(head_cfg: HeadConfig) -> Any:
    """The numpy target encoder / polygon decoder that goes with the head."""
    match head_cfg:
        case DBHeadConfig():
            from tcm.heads.db_codec import DBCodec

            return DBCodec(head_cfg)
        case PANHeadConfig():
            from tcm.heads.pan_codec import PANCodec

            return PANCodec(head_cfg)
        case FCEHeadConfig():
            from tcm.heads.fce_codec import FCECodec

            return FCECodec(head_cfg)
        case _:
            raise TypeError(f"unknown head config {type(head_cfg).__name__} (tcm/heads/codecs.py build_codec)")
