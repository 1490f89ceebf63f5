"""What an import checks and says: the one-sentence errors and the summary's words (models/importers.py).

Everything here reads only a file's header (shapes, dtypes, key names), so a bad file is refused
before any tensor is loaded or anything is compiled.
"""

from __future__ import annotations

import math
import os
from typing import Any

from vlp_jax.models import hf_configs, hf_layouts, pos_embed
from vlp_jax.models.hf_layouts import Entry
from vlp_jax.models.text import BERT_LN_EPS
from vlp_jax.models.vlp import VLPConfig

POS_EMBEDDING = 'vision/pos_embedding'  # the table whose patch grid an import may interpolate
MLM_ACTIVATION = 'gelu'  # what vlp_jax's MLM head computes with (vlp.py), as BERT's
UNTIED = {  # what the summary says of a file's decoder copy that differs from the tensor the tied head uses
    'cls.predictions.decoder.weight': 'differs from the word embeddings (untied): the MLM head decodes with the '
    'tied word embeddings',
    'cls.predictions.decoder.bias': 'differs from cls.predictions.bias: the MLM head adds cls.predictions.bias',
}


class ImportWeightsError(Exception):
    """A weights file that does not fit the configured model; the message is one sentence."""


def read_header(path: str, what: str) -> dict[str, tuple[tuple[int, ...], str]]:
    from safetensors import safe_open

    if not os.path.isfile(path):
        raise ImportWeightsError(f'{what} = {path!r} does not exist; name a Hugging Face model.safetensors file.')
    try:
        with safe_open(path, framework='numpy') as handle:
            return {k: (tuple(handle.get_slice(k).get_shape()), handle.get_slice(k).get_dtype()) for k in handle.keys()}
    except Exception as error:  # safetensors raises several types for a file that is not its format
        raise ImportWeightsError(f'{what} = {path!r} is not a readable safetensors file ({error}).') from error


def tower_cfg(model: VLPConfig, tower: str) -> Any:
    return model.text if tower == 'text' else model.vision


def depth_in_file(keys: set[str], entries: list[Entry]) -> int:
    """Layers the file holds: the count of consecutive layer indices with a block's first key."""
    first = next(e for e in entries if '/block_0/' in e.vlp)
    depth = 0
    while first.hf.replace('.0.', f'.{depth}.', 1) in keys:
        depth += 1
    return depth


def spans(what: str, first: int, count: int) -> str:
    """'file layer 3' or 'file layers 0-5': layers first .. first + count - 1."""
    return f'{what} layer {first}' if count == 1 else f'{what} layers {first}-{first + count - 1}'


def file_fusion_layers(layers: int, cfg: Any, layout: str, tower: str, what: str, path: str) -> int:
    """How many of the file's layers go to fusion blocks: 0 when they fill the text layers alone (a plain
    import), num_fusion_layers when they fill text + fusion layers (ALBEF's BERT-base split)."""
    fusion = getattr(cfg, 'num_fusion_layers', 0)
    if layers == cfg.depth:
        return 0
    if fusion and layout == 'bert' and layers == cfg.depth + fusion:
        return fusion
    if not fusion or layout != 'bert':
        raise ImportWeightsError(f'{what} = {path!r} holds {layers} layers; set model.{tower}.depth={layers}.')
    split = ''
    if layers >= 2:
        text_layers = layers - fusion if layers > fusion else layers - layers // 2
        split = f' (e.g. depth={text_layers} and fusion_layers={layers - text_layers})'
    raise ImportWeightsError(
        f'{what} = {path!r} holds {layers} layers but the text tower has {cfg.depth} text + {fusion} fusion '
        f'layers; set model.text.depth={layers} to fill the text layers alone, or model.text.depth and '
        f'model.text.fusion_layers to add up to {layers}{split}.'
    )


def shape_hint(path: str, shape: tuple[int, ...], want: tuple[int, ...]) -> str:
    """The option that sets the differing dimension of a tensor, as 'set KEY=VALUE'."""
    tower = path.split('/')[0]
    if '/xattn/' in path and path.endswith(('key/kernel', 'value/kernel')) and shape[:1] == want[:1]:
        return f"set model.vision.width={shape[1]} (the checkpoint's encoder_width)"
    rows_differ = bool(shape) and len(shape) == len(want) and shape[0] != want[0] and shape[1:] == want[1:]
    if rows_differ and (path.endswith('token_embed/embedding') or path == 'mlm_bias'):
        return f'set model.text.vocab_size={shape[0]}'
    if rows_differ and path == 'text/pos_embedding':
        return f'set model.text.max_positions={shape[0]}'
    if rows_differ and path.endswith('type_embedding'):
        return f'set model.text.type_vocab_size={shape[0]}'
    if path == 'vision/patch_embed/kernel' and shape[:2] == want[:2]:  # HF's [width, 3, p, p]
        return f"set model.vision.patch_size={shape[2]} (the checkpoint's; any model.image_size it divides works)"
    if path.startswith(('vision/pos_embedding', 'vision/patch_embed')):
        return "set model.image_size and model.vision.patch_size to the checkpoint's"
    if path.endswith('_proj/kernel'):
        return "set model.embed_dim to the checkpoint's projection size"
    return f"set model.{tower}.width, num_heads and mlp_dim to the checkpoint's"


def resized_grids(
    param: str, key: str, shape: tuple[int, ...], want: tuple[int, ...], what: str, path: str
) -> tuple[int, int] | None:
    """(file, model) grid sides when a position table differs from the model's only in its square grid of
    patch rows (rows on axis -2: ViT's [1, 1 + n, w], CLIP's [1 + n, w]), else None; a file grid that is not
    square is one sentence."""
    if param != POS_EMBEDDING or len(shape) != len(want) or shape[:-2] + shape[-1:] != want[:-2] + want[-1:]:
        return None
    side, model_side = pos_embed.square_grid(shape[-2]), pos_embed.square_grid(want[-2])
    if side is None:
        raise ImportWeightsError(
            f'{what} = {path!r}: tensor {key} has {shape[-2]} rows, not a class row and a square grid of patch '
            f"rows, so it cannot be interpolated to the model's {model_side}x{model_side} grid; name a ViT file "
            'of square images (model.image_size is square).'
        )
    return side, model_side


def mlm_words(cfg: Any) -> str:
    """The summary's words for an imported MLM head, naming what its forward differs in from the file's."""
    words = f'MLM head from {hf_layouts.MLM_HEAD}* (decoder tied to the word embeddings)'
    if cfg.activation != MLM_ACTIVATION or not math.isclose(cfg.ln_eps, BERT_LN_EPS, rel_tol=hf_configs.EPS_RTOL):
        words += (
            f" (vlp_jax's head computes with exact GELU and LayerNorm eps {BERT_LN_EPS:g}, the file's with "
            f'{cfg.activation} and {cfg.ln_eps:g})'
        )
    return words
