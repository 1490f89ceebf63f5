"""Pretrained weights from Hugging Face safetensors files into vlp_jax towers (and the export CLI).

`model.text.init` / `model.vision.init` name a `model.safetensors` file; its layout is read from its
keys: BERT (BertModel, MiniLM, task models' 'bert.' prefix) for the text tower, ViT (ViTModel, 'vit.')
for the image tower, CLIP (CLIPModel) or a ViT + BERT VisionTextDualEncoderModel (what `export --layout dual`
writes) for either (with that tower's projection and logit_scale).
On a new run the tower's params are replaced after init, in their shardings; everything else (the
other tower, fusion layers, heads, BERT's/ViT's projections) keeps its fresh init. Anything that does
not fit the configured model (a shape, a missing or extra tensor, an option the layout needs, a
config.json field beside the file) is one ImportWeightsError sentence naming the key to set, raised
while only the file's header is read. safetensors only: no torch, no pickle.

`model.scan=True` towers import too: the per-layer tensors are stacked on the 'layers' axis.

A ViT or CLIP image tower whose file has another square grid of patches (e.g. DeiT's 224 px into ALBEF's
256 px, same patch size) gets the file's position embeddings interpolated to the model's grid as ALBEF does
(class row kept, patch rows resized bicubically as torch does; models/pos_embed.py); the summary says so.

A fusion text tower (ALBEF) takes a BERT file of depth + fusion_layers layers as ALBEF takes bert-base-uncased:
file layers [0, depth) fill the text layers, [depth, depth + fusion_layers) the fusion layers' self-attention,
MLP and LayerNorms; their cross-attention comes from the file's `crossattention.*` tensors when it has them
(an exported fusion tower), else it keeps its fresh init and the summary lists it as left fresh. A file of
`depth` layers fills the text layers alone and leaves the fusion layers fresh. A fusion model also takes
BertForMaskedLM's MLM head (`cls.predictions.*`: transform.dense, transform.LayerNorm, bias) into its own
(mlm_dense, mlm_norm, mlm_bias), as ALBEF does; the decoder stays tied to the word embeddings.

The header-only checks and the summary's words are in models/import_checks.py; the flat and
scanned param naming shared with the exporter is in models/param_paths.py.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from vlp_jax.models import hf_configs, hf_layouts, pos_embed
from vlp_jax.models.hf_layouts import TRANSFORMS, Entry
from vlp_jax.models.import_checks import (
    POS_EMBEDDING,
    UNTIED,
    ImportWeightsError,
    depth_in_file,
    file_fusion_layers,
    mlm_words,
    read_header,
    resized_grids,
    shape_hint,
    spans,
    tower_cfg,
)
from vlp_jax.models.param_paths import flat, path_key, rescan, unscanned_shapes
from vlp_jax.models.vlp import VLPConfig

PyTree = Any
LIST_AT_MOST = 4  # names shown in a summary before '... and N more'
PARAM_DTYPE = np.float32
WORD_TABLE = 'text/token_embed/embedding'


@dataclasses.dataclass(frozen=True)
class Plan:
    """What one file contributes to one tower: (file key, entry) pairs, and what is left out."""

    path: str
    layout: str
    pairs: tuple[tuple[str, Entry], ...]
    unused: tuple[str, ...]  # the file's keys for this tower that are not imported
    fresh: tuple[str, ...]  # optional params the file has no tensor for
    layers: str = ''  # how the file's layers map onto a fusion tower's text and fusion blocks
    left_fresh: tuple[str, ...] = ()  # fusion params that keep their init (cross-attention, or whole layers)
    left_fresh_what: str = ''  # the same in words, for the summary
    pos_grids: tuple[int, int] | None = None  # (file, model) patch grid sides when the position table is resized
    mlm: str = ''  # the MLM head imported from the file, in words
    tied: tuple[str, ...] = ()  # the file's tied copies of the decoder (checked by import_tower, not imported)
    untied: tuple[str, ...] = ()  # those of them that differ from what the tied head uses (set by import_tower)

    def summary(self, tower: str) -> str:
        def names(items: tuple[str, ...]) -> str:
            more = f' and {len(items) - LIST_AT_MOST} more' if len(items) > LIST_AT_MOST else ''
            return ', '.join(items[:LIST_AT_MOST]) + more

        text = f'imported {len(self.pairs)} tensors ({self.layout} layout) into the {tower} tower from {self.path}'
        if self.unused:
            text += f'; not imported: {names(self.unused)}'
        if self.layers:
            text += f'; {self.layers}'
        if self.fresh:
            text += f'; fresh: {names(self.fresh)}'
        if self.left_fresh:
            text += f'; left fresh: {self.left_fresh_what} ({len(self.left_fresh)} arrays)'
        if self.pos_grids:
            (old, new) = self.pos_grids
            text += f'; position embeddings interpolated from {old}x{old} to {new}x{new} (bicubic)'
        if self.mlm:
            text += f'; {self.mlm}'
        for key in self.untied:
            text += f'; {key} {UNTIED[key]}'
        return text


def plan(path: str, tower: str, model: VLPConfig, target: dict[str, tuple[int, ...]], what: str) -> Plan:
    """Checks `path` against a model's param shapes (`target`, unscanned paths) reading only its header."""
    header = read_header(path, what)
    detected = hf_layouts.detect(list(header))
    if detected is None:
        raise ImportWeightsError(
            f'{what} = {path!r} matches none of the layouts {hf_layouts.LAYOUTS} '
            f'(first key {next(iter(header), None)!r}); '
            'name a BertModel, ViTModel, CLIPModel or VisionTextDualEncoderModel safetensors file.'
        )
    layout, prefix = detected
    if tower not in hf_layouts.TOWER_OF[layout]:
        raise ImportWeightsError(
            f'{what} = {path!r} is a {layout} file, which has no {tower} tower; name another file.'
        )
    cfg = tower_cfg(model, tower)
    for option, value in hf_layouts.REQUIRED[(layout, tower)].items():
        if getattr(cfg, option) != value:
            raise ImportWeightsError(
                f'{what} = {path!r} is a {layout} {tower} tower; set model.{tower}.{option}={value!r}.'
            )
    directory = os.path.dirname(os.path.abspath(path))
    problems = []
    if os.path.isfile(os.path.join(directory, 'config.json')):
        with open(os.path.join(directory, 'config.json')) as handle:
            source = os.path.join(directory, 'config.json')
            problems.append(hf_configs.config_problem(json.load(handle), model, layout, tower, source))
    if layout == 'bert':
        problems.append(hf_configs.pooling_problem(directory, cfg.pool))
    if any(problems):
        raise ImportWeightsError(f'{what} = {path!r}: {next(p for p in problems if p)}.')

    file_keys = set(header)
    legacy = hf_layouts.legacy_names(layout, file_keys)  # {current name: the file's older name}
    header = {**header, **{name: header[old] for name, old in legacy.items()}}
    keys = set(header)
    layer_entries = hf_layouts.entries(layout, tower, 1)
    layer_entries = [Entry(prefix + e.hf, e.vlp, e.kind, e.optional) for e in layer_entries]
    layers = depth_in_file(keys, layer_entries)
    fusion = file_fusion_layers(layers, cfg, layout, tower, what, path)
    pairs, fresh, covered, cross_fresh, head_in, head_out, pos_grids = [], [], set(), [], [], [], None
    for entry in hf_layouts.entries(layout, tower, cfg.depth, fusion):
        key = entry.hf if entry.hf.startswith(hf_layouts.UNPREFIXED) else prefix + entry.hf
        in_file, in_model = key in keys, entry.vlp in target
        if in_model and entry.optional == 'head':
            (head_in if in_file else head_out).append((key, entry.vlp))
        if in_file and in_model:
            shape = header[key][0]
            want = TRANSFORMS[entry.kind].hf_shape(target[entry.vlp])
            if entry.kind == 'vocab':
                want = (model.text.vocab_size, *target[entry.vlp][1:])
            if tuple(shape) != tuple(want):
                pos_grids = resized_grids(entry.vlp, key, tuple(shape), tuple(want), what, path)
                if pos_grids is None:
                    hint = shape_hint(entry.vlp, tuple(shape), tuple(want))
                    raise ImportWeightsError(
                        f'{what} = {path!r}: tensor {key} has shape {shape} but model param {entry.vlp} '
                        f'needs {want}; {hint}.'
                    )
            pairs.append((legacy.get(key, key), entry))
            covered.add(entry.vlp)
        elif in_file and entry.optional not in ('model', 'head'):
            rows = header[key][0][0] if header[key][0] else None
            raise ImportWeightsError(
                f'{what} = {path!r} has {key} but the model has no param {entry.vlp}; '
                f'{hf_layouts.option_hint(entry.vlp, True, rows)}.'
            )
        elif in_model and hf_layouts.CROSS_PARAM.search(entry.vlp):
            cross_fresh.append(entry.vlp)
        elif in_model and entry.optional == 'file':
            fresh.append(entry.vlp)
        elif in_model and entry.optional != 'head':
            raise ImportWeightsError(
                f'{what} = {path!r} has no tensor {key} for model param {entry.vlp}; '
                f'{hf_layouts.option_hint(entry.vlp, False)} or name a file that has it.'
            )
    if head_in and head_out:
        raise ImportWeightsError(
            f'{what} = {path!r} has {head_in[0][0]} but no {head_out[0][0]} for model param {head_out[0][1]}; '
            f'name a file with the whole MLM head ({hf_layouts.MLM_HEAD}*) or none of it.'
        )
    mlm, tied = '', ()
    if head_in:
        mlm = mlm_words(cfg)
        tied = tuple(sorted(k for k in hf_layouts.MLM_TIED if k in file_keys))
    groups = {tower} | {p.split('/')[0] for p in covered}
    for param in sorted(target):
        if param.split('/')[0] in groups and not param.startswith('text/fusion/') and param not in covered:
            if param not in fresh:
                raise ImportWeightsError(
                    f'{what} = {path!r} ({layout} layout) has no tensor for model param {param}; '
                    f'{hf_layouts.option_hint(param, False)}.'
                )
    cross_imported = sorted(p for p in covered if hf_layouts.CROSS_PARAM.search(p))
    if cross_fresh and cross_imported:
        raise ImportWeightsError(
            f'{what} = {path!r} has cross-attention tensors for {cross_imported[0]} but none for '
            f'{cross_fresh[0]}; name a file with the cross-attention of every fusion layer or of none.'
        )
    mapping, left_fresh, left_fresh_what = '', tuple(cross_fresh), ''
    total_fusion = getattr(cfg, 'num_fusion_layers', 0)
    if fusion:
        mapping = (
            f'{spans("file", 0, cfg.depth)} -> {spans("text", 0, cfg.depth)}, '
            f'{spans("file", cfg.depth, fusion)} -> {spans("fusion", 0, fusion)} (self-attention, MLP, their '
            f'LayerNorms{", cross-attention" if cross_imported else ""})'
        )
        left_fresh_what = f'the cross-attention of {spans("fusion", 0, fusion)} (xattn, ln_xattn)'
    elif total_fusion:
        left_fresh = tuple(sorted(p for p in target if p.startswith(f'{tower}/fusion/')))
        left_fresh_what = f'{spans("fusion", 0, total_fusion)} ({tower}/fusion/)'
    tower_prefix = {'bert': prefix, 'vit': prefix, 'clip': f'{tower}_model.', 'dual': f'{tower}_model.'}[layout]
    used = {key for key, _ in pairs} | set(tied)
    unused = tuple(sorted(k for k in file_keys if k.startswith(tower_prefix) and k not in used))
    if layout not in ('clip', 'dual'):
        unused = tuple(sorted(k for k in file_keys if k not in used))
    return Plan(
        path, layout, tuple(pairs), unused, tuple(fresh), mapping, left_fresh, left_fresh_what, pos_grids, mlm, tied
    )


def load(plan_: Plan, target: dict[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
    """{unscanned param path: float32 array in vlp_jax's shape} for every pair of the plan."""
    from safetensors import safe_open

    out = {}
    with safe_open(plan_.path, framework='numpy') as handle:
        for key, entry in plan_.pairs:
            array = np.asarray(handle.get_tensor(key)).astype(PARAM_DTYPE)
            if entry.vlp == POS_EMBEDDING and plan_.pos_grids:
                table = array.reshape(array.shape[-2], array.shape[-1])
                array = pos_embed.interpolate_pos_embedding(table, plan_.pos_grids[1])
            out[entry.vlp] = TRANSFORMS[entry.kind].to_vlp(array, target[entry.vlp])
    return out


def untied(plan_: Plan, arrays: dict[str, np.ndarray]) -> tuple[str, ...]:
    """The file's decoder copies (plan_.tied) that differ from what the tied MLM head uses (`arrays`, from
    `load`): a BertForMaskedLM saved with untied weights, which the summary then names."""
    from safetensors import safe_open

    used = {entry.hf: arrays[entry.vlp] for _, entry in plan_.pairs if entry.vlp in (WORD_TABLE, 'mlm_bias')}
    out = []
    with safe_open(plan_.path, framework='numpy') as handle:
        for key in plan_.tied:
            copy = np.asarray(handle.get_tensor(key)).astype(PARAM_DTYPE)
            want = used[hf_layouts.MLM_TIED[key]]
            if copy.shape != want.shape or not np.array_equal(copy, want):
                out.append(key)
    return tuple(out)


def import_tower(
    path: str, tower: str, model: VLPConfig, params: PyTree, what: str | None = None
) -> tuple[dict[str, np.ndarray], Plan]:
    """({param path: array} for `params`' layout (scanned or not), the plan) from one file.

    The word table's arrays hold only the file's rows (`place` keeps the padding rows)."""
    what = what or f'model.{tower}.init'
    shapes = {k: tuple(np.shape(v)) for k, v in flat(params).items()}
    target = unscanned_shapes(shapes)
    plan_ = plan(path, tower, model, target, what)
    arrays = load(plan_, target)
    if plan_.tied:
        plan_ = dataclasses.replace(plan_, untied=untied(plan_, arrays))
    return rescan(arrays, set(shapes)), plan_


def place(params: PyTree, arrays: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    """{path: array in the sharding of `params`' leaf}; a table with fewer rows keeps the leaf's others
    (the padding rows of the word table), merged on device so no process needs the whole leaf."""
    leaves = flat(params)
    out = {}
    for path, array in arrays.items():
        leaf = leaves[path]
        rows = None
        if array.shape != leaf.shape:
            rows = array.shape[0]
            assert array.shape[1:] == leaf.shape[1:] and rows < leaf.shape[0], (path, array.shape, leaf.shape)
            array = np.concatenate([array, np.zeros((leaf.shape[0] - rows, *leaf.shape[1:]), array.dtype)])
        sharding = getattr(leaf, 'sharding', None)
        column = (-1,) + (1,) * (array.ndim - 1)  # the row index, broadcast over the other axes
        if sharding is None:  # host params (numpy)
            out[path] = array if rows is None else np.where(np.arange(len(array)).reshape(column) < rows, array, leaf)
            continue
        new = jax.make_array_from_callback(array.shape, sharding, lambda index, a=array: a[index])
        if rows is not None:
            keep = jax.jit(
                lambda n, o, r=rows, c=column: jnp.where(jnp.arange(o.shape[0]).reshape(c) < r, n, o),
                out_shardings=sharding,
            )
            new = keep(new, leaf)
        out[path] = new
    return out


def import_into(
    params: PyTree, path: str, tower: str, model: VLPConfig, what: str | None = None
) -> tuple[PyTree, Plan]:
    """`params` (host or device arrays) with `tower` (and, from a CLIP file, its projection and the
    temperature) replaced from the file at `path`: the library form of `model.<tower>.init`."""
    arrays, plan_ = import_tower(path, tower, model, params, what)
    placed = place(params, arrays)
    new = jax.tree_util.tree_map_with_path(lambda p, leaf: placed.get(path_key(p), leaf), params)
    return new, plan_


def configured_inits(config: Any) -> list[tuple[str, str]]:
    """[(tower, path)] of the towers whose `model.<tower>.init` names a file (vision first)."""
    model = config.model
    inits = [(tower, str(model[tower].get('init', '') or '')) for tower in ('vision', 'text')]
    return [(tower, path) for tower, path in inits if path]


def check_inits(inits: list[tuple[str, str]], model: VLPConfig, boxed_params: PyTree) -> None:
    """Reads only the headers: every configured file (`configured_inits`) fits the model whose params'
    shapes `boxed_params` holds (under jax.eval_shape); ImportWeightsError otherwise."""
    from flax import linen as nn

    shapes = {k: tuple(v.shape) for k, v in flat(nn.meta.unbox(boxed_params)).items()}
    for tower, path in inits:
        plan(path, tower, model, unscanned_shapes(shapes), f'model.{tower}.init')


def imported_params(config: Any, model: VLPConfig, params: PyTree) -> tuple[dict[str, jax.Array], list[str]]:
    """({path: array in its sharding} from every configured file, one summary line per file)."""
    arrays, lines = {}, []
    for tower, path in configured_inits(config):
        tower_arrays, plan_ = import_tower(path, tower, model, params)
        arrays.update(tower_arrays)
        lines.append(f'model.{tower}.init: {plan_.summary(tower)}')
    return place(params, arrays), lines


def main(argv: list[str] | None = None) -> int:
    """`python -m vlp_jax.models.importers export CHECKPOINT OUT_DIR --layout bert|vit|clip|dual|bert_lm`."""
    from vlp_jax.models import exporters

    return exporters.main(argv if argv is not None else sys.argv[1:])


if __name__ == '__main__':
    sys.exit(main())
