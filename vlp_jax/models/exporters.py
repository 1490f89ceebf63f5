"""vlp_jax towers out to Hugging Face safetensors files (BERT, ViT, CLIP layouts), and the CLI.

    python -m vlp_jax.models.importers export CHECKPOINT OUT_DIR --layout bert|vit|clip

CHECKPOINT is a workdir, its checkpoints/ directory or one step directory. OUT_DIR receives
model.safetensors (float32, metadata format 'pt', which transformers expects) and a config.json for
BertModel / ViTModel / CLIPModel. A model whose options the layout cannot express (a pre-LN text tower
as BERT, projection biases as CLIP, ...) is refused with one line naming the option.

A fusion text tower (ALBEF) is written as BERT of depth + fusion_layers layers, the fusion layers after the
text layers, each with its cross-attention under transformers' `encoder.layer.{i}.crossattention.*` names;
config.json adds ALBEF xbert's `fusion_layer` (= depth: the first layer with cross-attention) and
`encoder_width` (the image tokens' width). transformers' BertModel reads such a file as a plain BERT of
depth + fusion_layers layers (it reports the crossattention tensors as unexpected: its add_cross_attention
puts cross-attention in every layer and needs is_decoder, a causal mask); importing it into the same
fusion tower restores every param, the cross-attention included. A fusion model's MLM head is written as
BertForMaskedLM's `cls.predictions.*` (transform.dense, transform.LayerNorm, bias; the decoder is tied to the
word embeddings, so it has no tensor of its own). A ViT is written at the model's own patch grid.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

from vlp_jax.models import hf_configs, hf_layouts
from vlp_jax.models.hf_layouts import TRANSFORMS
from vlp_jax.models.import_checks import ImportWeightsError
from vlp_jax.models.param_paths import SCANNED, flat
from vlp_jax.models.vlp import VLPConfig

WEIGHTS_FILE = 'model.safetensors'
CONFIG_FILE = 'config.json'
SAFETENSORS_METADATA = {'format': 'pt'}  # transformers refuses safetensors files without it


def unscan(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Scanned params ('.../layers/block/x', leading depth axis) split into '.../block_{i}/x'."""
    out = {}
    for path, array in arrays.items():
        match = SCANNED.match(path)
        if match:
            out.update({f'{match[1]}/block_{i}/{match[2]}': array[i] for i in range(array.shape[0])})
        else:
            out[path] = array
    return out


def export_tensors(params: dict[str, np.ndarray], model: VLPConfig, layout: str) -> dict[str, np.ndarray]:
    """{HF key: array} of `layout` from a model's flat params (scanned or not); ImportWeightsError
    names the option when the model cannot be written in that layout."""
    params = unscan({path: np.asarray(value) for path, value in params.items()})
    towers = hf_layouts.TOWER_OF[layout]
    out, covered = {}, set()
    for tower in towers:
        cfg = model.text if tower == 'text' else model.vision
        for option, value in hf_layouts.REQUIRED[(layout, tower)].items():
            if getattr(cfg, option) != value:
                raise ImportWeightsError(
                    f'the {tower} tower cannot be written in the {layout} layout; '
                    f'it needs model.{tower}.{option}={value!r}.'
                )
        fusion = model.text.num_fusion_layers if (layout, tower) == ('bert', 'text') else 0
        for entry in hf_layouts.entries(layout, tower, cfg.depth, fusion):
            if entry.vlp not in params:
                if entry.vlp.endswith('type_embedding'):  # no token types: a zero row adds nothing, as in vlp_jax
                    out[entry.hf] = np.zeros((1, model.text.width), np.float32)
                    continue
                if entry.optional in ('model', 'head'):  # no pooler; no MLM head (a dual model)
                    continue
                raise ImportWeightsError(
                    f'the {tower} tower cannot be written in the {layout} layout: it has no param {entry.vlp}; '
                    f'{hf_layouts.option_hint(entry.vlp, True, 1)}.'
                )
            array = TRANSFORMS[entry.kind].to_hf(params[entry.vlp])
            if entry.kind == 'vocab':
                array = array[: model.text.vocab_size]
            out[entry.hf] = np.array(array, dtype=np.float32, order='C')  # 0-d stays 0-d (logit_scale)
            covered.add(entry.vlp)
    groups = set(towers) | {path.split('/')[0] for path in covered}
    for path in sorted(params):
        if path.split('/')[0] in groups and not path.startswith('text/fusion/') and path not in covered:
            raise ImportWeightsError(
                f'param {path} has no place in the {layout} layout; {hf_layouts.option_hint(path, False)} '
                'or export another layout.'
            )
    return out


def export_checkpoint(checkpoint: str, out_dir: str, layout: str) -> str:
    """Writes OUT_DIR/model.safetensors and config.json from a vlp_jax checkpoint; returns a summary line."""
    import jax
    from safetensors.numpy import save_file

    from vlp_jax.checkpointing import CheckpointError, restore_params_from
    from vlp_jax.config_files import model_config_of
    from vlp_jax.models.vlp import model_config_from_dict

    model_dict = model_config_of(checkpoint)
    if model_dict is None:
        raise ImportWeightsError(
            f'{checkpoint} is not a vlp_jax checkpoint with a model config; pass a workdir, checkpoints/ or step dir.'
        )
    model = model_config_from_dict(model_dict)
    try:
        params = flat(jax.device_get(restore_params_from(checkpoint)))
    except CheckpointError as error:
        raise ImportWeightsError(str(error)) from error
    tensors = export_tensors(params, model, layout)
    os.makedirs(out_dir, exist_ok=True)
    save_file(tensors, os.path.join(out_dir, WEIGHTS_FILE), metadata=SAFETENSORS_METADATA)
    with open(os.path.join(out_dir, CONFIG_FILE), 'w') as handle:
        json.dump(hf_configs.hf_config(model, layout), handle, indent=1)
    return f'wrote {len(tensors)} tensors ({layout} layout) to {os.path.join(out_dir, WEIGHTS_FILE)}'


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog='python -m vlp_jax.models.importers', description=__doc__.split('\n')[0])
    commands = parser.add_subparsers(dest='command', required=True)
    export = commands.add_parser('export', help="write a checkpoint's towers as Hugging Face safetensors")
    export.add_argument('checkpoint', help='a vlp_jax workdir, its checkpoints/ directory or one step directory')
    export.add_argument('out_dir', help='directory for model.safetensors and config.json')
    export.add_argument('--layout', required=True, choices=hf_layouts.LAYOUTS)
    args = parser.parse_args(argv)
    try:
        print(export_checkpoint(args.checkpoint, args.out_dir, args.layout), flush=True)
    except ImportWeightsError as error:
        print(f'error: {error}', file=sys.stderr, flush=True)
        return 2
    return 0
