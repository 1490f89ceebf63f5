"""vlp_jax towers out to Hugging Face safetensors files (BERT, ViT, CLIP, dual layouts), and the CLI.

    python -m vlp_jax.models.importers export CHECKPOINT OUT_DIR --layout bert|vit|clip|dual|bert_lm

CHECKPOINT is a workdir, its checkpoints/ directory or one step directory. OUT_DIR receives
model.safetensors (float32, metadata format 'pt', which transformers expects) and a config.json for
BertModel / ViTModel / CLIPModel / VisionTextDualEncoderModel ('dual': ViT + BERT + projections + logit
scale). A model whose options the layout cannot express (a pre-LN text tower as BERT, projection biases
as CLIP, ...) is refused with one line naming the option. An export with a text tower ships vlp_jax's
tokenizer (tokenizer.json, tokenizer_config.json with model_max_length = model.max_text_len, vocab.txt,
special_tokens_map.json), so transformers' AutoTokenizer gives the ids vlp_jax trained on; one with an
image tower ships preprocessor_config.json (ViTImageProcessor: resize to model.image_size, pixels
(p / 255 - 0.5) / 0.5, as vlp_jax's data). logit_scale is written clamped as vlp_jax clamps the
temperature, so logits_per_image are vlp_jax's scores (a SigLIP run's sigmoid_bias has no place in either
model: it shifts every logit alike).

A fusion text tower (ALBEF) is written as BERT of depth + fusion_layers layers, the fusion layers after the
text layers, each with its cross-attention under transformers' `encoder.layer.{i}.crossattention.*` names;
config.json adds ALBEF xbert's `fusion_layer` (= depth: the first layer with cross-attention) and
`encoder_width` (the image tokens' width). transformers' BertModel reads such a file as a plain BERT of
depth + fusion_layers layers (it reports the crossattention tensors as unexpected: its add_cross_attention
puts cross-attention in every layer and needs is_decoder, a causal mask); importing it into the same
fusion tower restores every param, the cross-attention included. A fusion model's MLM head is written as
BertForMaskedLM's `cls.predictions.*` (transform.dense, transform.LayerNorm, bias; the decoder is tied to the
word embeddings, so it has no tensor of its own). A ViT is written at the model's own patch grid.

`--layout bert_lm` writes a 'separate' decoder (models/decoder.py) as transformers' BertLMHeadModel with
is_decoder and add_cross_attention: the text tower's embeddings under 'bert.embeddings', decoder block i
under 'bert.encoder.layer.{i}' (self-attention, cross-attention, MLP), the fusion model's MLM head as
'cls.predictions' (tied to the word embeddings); config.json carries bos_token_id = vlp_jax's [BOS] (1) and
eos_token_id = [SEP]. Given the same encoder_hidden_states (the image tokens, or the fused question), it
computes vlp_jax's decoder logits. It is written, not read back. A 'shared' (BLIP) decoder has no such
layout (decoder_problem says why).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
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
PREPROCESSOR_FILE = 'preprocessor_config.json'
ARCHITECTURES = {
    'bert': 'BertModel',
    'vit': 'ViTModel',
    'clip': 'CLIPModel',
    'dual': 'VisionTextDualEncoderModel',
    'bert_lm': 'BertLMHeadModel',
}
TOKENIZER_INPUTS = ['input_ids', 'attention_mask']  # no token_type_ids: vlp_jax has none, CLIPModel takes none
# keys transformers' save_pretrained records about how the tokenizer was loaded, not how it tokenizes
LOADING_KEYS = ('is_local', 'local_files_only', 'name_or_path')


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
    if layout == hf_layouts.BERT_LM:
        problem = decoder_problem(model)
        if problem:
            raise ImportWeightsError(problem)
    out, covered = {}, set()
    for tower in towers:
        cfg = model.vision if tower == 'vision' else model.text  # the decoder follows the text tower's options
        needed = [
            f'model.{"vision" if tower == "vision" else "text"}.{option}={value!r}'
            for option, value in hf_layouts.REQUIRED[(layout, tower)].items()
            if getattr(cfg, option) != value
        ]
        if needed:
            raise ImportWeightsError(
                f'the {tower} tower cannot be written in the {layout} layout; it needs {" and ".join(needed)}.'
            )
        fusion = model.text.num_fusion_layers if (layout, tower) == ('bert', 'text') else 0
        depth = model.decoder.depth if tower == 'decoder' else cfg.depth
        for entry in hf_layouts.entries(layout, tower, depth, fusion):
            if entry.vlp not in params:
                if entry.vlp.endswith('type_embedding'):  # no token types: a zero row adds nothing, as in vlp_jax
                    out[entry.hf] = np.zeros((1, model.text.width), np.float32)
                    continue
                if layout == hf_layouts.DUAL and entry.vlp.startswith('vision/pooler/'):
                    # ViTModel always pools by its pooler; with pooler_act 'linear' (hf_configs) an identity
                    # dense hands on the CLS token unchanged, as vlp_jax's tower without a pooler does
                    eye = np.eye(cfg.width, dtype=np.float32)
                    out[entry.hf] = eye if entry.vlp.endswith('kernel') else np.zeros(cfg.width, np.float32)
                    continue
                if entry.optional in ('model', 'head'):  # no pooler; no MLM head (a dual model)
                    continue
                raise ImportWeightsError(
                    f'the {tower} tower cannot be written in the {layout} layout: it has no param {entry.vlp}; '
                    f'{hf_layouts.option_hint(entry.vlp, True, 1)}.'
                )
            array = params[entry.vlp]
            if entry.vlp == 'log_temperature':  # the model clamps the temperature to [min, max] (vlp.logit_scale)
                low, high = math.log(model.temperature_min), math.log(model.temperature_max)
                array = np.clip(array, np.float32(low), np.float32(high)).astype(array.dtype)
            array = TRANSFORMS[entry.kind].to_hf(array)
            if entry.kind == 'vocab':
                array = array[: model.text.vocab_size]
            out[entry.hf] = np.array(array, dtype=np.float32, order='C')  # 0-d stays 0-d (logit_scale)
            covered.add(entry.vlp)
    groups = set(towers) | ({path.split('/')[0] for path in covered} if 'decoder' not in towers else set())
    for path in sorted(params):
        if path.split('/')[0] in groups and not path.startswith('text/fusion/') and path not in covered:
            raise ImportWeightsError(
                f'param {path} has no place in the {layout} layout; {hf_layouts.option_hint(path, False)} '
                'or export another layout.'
            )
    return out


def decoder_problem(model: VLPConfig) -> str | None:
    """Why this model's decoder cannot be written as transformers' BertLMHeadModel, or None."""
    decoder = model.decoder
    if decoder is None:
        return "the model has no decoder (model.decoder.layout='none'); export a run with a 'separate' decoder."
    if decoder.layout == 'shared':
        return (
            "a 'shared' (BLIP) decoder has no BertLMHeadModel layout: its first model.text.depth layers have no "
            'cross-attention, and add_cross_attention gives every BertLayer one whose post-LN LayerNorm changes '
            "the hidden state even with zero weights; export a run with model.decoder.layout='separate'."
        )
    if decoder.context == 'image' and model.vision.width != model.text.width:
        return (
            f'BertLMHeadModel cross-attends to states of its hidden_size (model.text.width={model.text.width}) but '
            f'this decoder reads image tokens of model.vision.width={model.vision.width}; set them equal.'
        )
    return None


def write_tokenizer(out_dir: str, max_len: int) -> None:
    """vlp_jax's tokenizer (the shipped uncased WordPiece vocabulary, truncating and padding to `max_len`) as
    transformers saves one, plus vocab.txt and special_tokens_map.json for older readers."""
    from transformers import BertTokenizerFast

    from vlp_jax.data.tokenizer import SHIPPED_VOCAB_DIR

    tokenizer = BertTokenizerFast.from_pretrained(
        SHIPPED_VOCAB_DIR, local_files_only=True, model_max_length=max_len, model_input_names=TOKENIZER_INPUTS
    )
    tokenizer.save_pretrained(out_dir)
    path = os.path.join(out_dir, 'tokenizer_config.json')
    with open(path) as handle:
        config = json.load(handle)
    config = {key: value for key, value in config.items() if key not in LOADING_KEYS}
    with open(path, 'w') as handle:
        json.dump(config, handle, indent=1)
    for name in ('vocab.txt', 'special_tokens_map.json'):
        shutil.copyfile(os.path.join(SHIPPED_VOCAB_DIR, name), os.path.join(out_dir, name))


def preprocessor_config(image_size: int) -> dict:
    """ViTImageProcessor's config that turns an image of the model's size into vlp_jax's pixels
    (data/batch.py: (p / 255 - PIXEL_MEAN) / PIXEL_STD), channels first; other sizes are resized bilinearly."""
    from vlp_jax.data.batch import PIXEL_MEAN, PIXEL_STD

    return {
        'image_processor_type': 'ViTImageProcessor',
        'do_resize': True,
        'size': {'height': image_size, 'width': image_size},
        'resample': 2,  # PIL's BILINEAR
        'do_rescale': True,
        'rescale_factor': 1 / 255,
        'do_normalize': True,
        'image_mean': [PIXEL_MEAN] * 3,
        'image_std': [PIXEL_STD] * 3,
    }


def write_export(out_dir: str, tensors: dict[str, np.ndarray], model: VLPConfig, layout: str) -> list[str]:
    """Writes model.safetensors, config.json and, by the layout's towers, the tokenizer and the image processor's
    config into OUT_DIR; returns what it wrote beside the weights, in words."""
    from safetensors.numpy import save_file

    from vlp_jax.data.tokenizer import BERT_VOCAB_SIZE

    os.makedirs(out_dir, exist_ok=True)
    save_file(tensors, os.path.join(out_dir, WEIGHTS_FILE), metadata=SAFETENSORS_METADATA)
    with open(os.path.join(out_dir, CONFIG_FILE), 'w') as handle:
        json.dump(hf_configs.hf_config(model, layout), handle, indent=1)
    written = [CONFIG_FILE]
    towers = hf_layouts.TOWER_OF[layout]
    if 'text' in towers or 'decoder' in towers:
        if model.text.vocab_size >= BERT_VOCAB_SIZE:
            write_tokenizer(out_dir, model.text.max_len)
            written.append(f'the tokenizer (max_length {model.text.max_len})')
        else:  # a tower of a small synthetic vocabulary: the shipped tokenizer's ids would not fit it
            written.append(
                f'no tokenizer (model.text.vocab_size={model.text.vocab_size} is smaller than the shipped '
                f"vocabulary's {BERT_VOCAB_SIZE})"
            )
    if 'vision' in towers:
        with open(os.path.join(out_dir, PREPROCESSOR_FILE), 'w') as handle:
            json.dump(preprocessor_config(model.vision.image_size), handle, indent=1)
        written.append(PREPROCESSOR_FILE)
    return written


def export_checkpoint(checkpoint: str, out_dir: str, layout: str) -> str:
    """Writes OUT_DIR's model.safetensors, config.json, tokenizer and image processor config from a vlp_jax
    checkpoint; returns a summary line."""
    import jax

    from vlp_jax.checkpointing import CheckpointError, restore_params_from
    from vlp_jax.config_files import model_config_of
    from vlp_jax.models.vlp import model_config_from_dict

    try:
        model_dict = model_config_of(checkpoint)
    except CheckpointError as error:  # not a checkpoint at all: one line, as below
        raise ImportWeightsError(str(error)) from error
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
    written = write_export(out_dir, tensors, model, layout)
    return (
        f'wrote {len(tensors)} tensors ({layout} layout: transformers {ARCHITECTURES[layout]}) to '
        f'{os.path.join(out_dir, WEIGHTS_FILE)}, with {", ".join(written)}'
    )


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog='python -m vlp_jax.models.importers', description=__doc__.split('\n')[0])
    commands = parser.add_subparsers(dest='command', required=True)
    export = commands.add_parser('export', help="write a checkpoint's towers as Hugging Face safetensors")
    export.add_argument('checkpoint', help='a vlp_jax workdir, its checkpoints/ directory or one step directory')
    export.add_argument(
        'out_dir', help='directory for model.safetensors, config.json, the tokenizer and preprocessor_config.json'
    )
    export.add_argument('--layout', required=True, choices=hf_layouts.EXPORT_LAYOUTS)
    args = parser.parse_args(argv)
    try:
        print(export_checkpoint(args.checkpoint, args.out_dir, args.layout), flush=True)
    except ImportWeightsError as error:
        print(f'error: {error}', file=sys.stderr, flush=True)
        return 2
    return 0
