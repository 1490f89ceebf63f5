"""Pretrained weights from Hugging Face safetensors files into vlp_jax towers (and the export CLI).

`model.text.init` / `model.vision.init` name a `model.safetensors` file; its layout is read from its
keys: BERT (BertModel, MiniLM, task models' 'bert.' prefix) for the text tower, ViT (ViTModel, 'vit.')
for the image tower, CLIP (CLIPModel) for either (with that tower's projection and logit_scale).
On a new run the tower's params are replaced after init, in their shardings; everything else (the
other tower, fusion layers, heads, BERT's/ViT's projections) keeps its fresh init. Anything that does
not fit the configured model (a shape, a missing or extra tensor, an option the layout needs, a
config.json field beside the file) is one ImportWeightsError sentence naming the key to set, raised
while only the file's header is read. safetensors only: no torch, no pickle.

`model.scan=True` towers import too: the per-layer tensors are stacked on the 'layers' axis.

A fusion text tower (ALBEF) takes a BERT file of depth + fusion_layers layers as ALBEF takes bert-base-uncased:
file layers [0, depth) fill the text layers, [depth, depth + fusion_layers) the fusion layers' self-attention,
MLP and LayerNorms; their cross-attention comes from the file's `crossattention.*` tensors when it has them
(an exported fusion tower), else it keeps its fresh init and the summary lists it as left fresh. A file of
`depth` layers fills the text layers alone and leaves the fusion layers fresh.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import sys
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from vlp_jax.models import hf_configs, hf_layouts
from vlp_jax.models.hf_layouts import TRANSFORMS, Entry
from vlp_jax.models.vlp import VLPConfig

PyTree = Any
SCANNED = re.compile(r'^(.*)/layers/block/(.*)$')
UNSCANNED = re.compile(r'^(.*)/block_(\d+)/(.*)$')
LIST_AT_MOST = 4  # names shown in a summary before '... and N more'
PARAM_DTYPE = np.float32


class ImportWeightsError(Exception):
    """A weights file that does not fit the configured model; the message is one sentence."""


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
        return text


def _path_key(path: tuple) -> str:
    return '/'.join(str(getattr(k, 'key', getattr(k, 'name', k))) for k in path)


def flat(tree: PyTree) -> dict[str, Any]:
    """'a/b/c' -> leaf."""
    return {_path_key(path): leaf for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def unscanned_shapes(shapes: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    """Scanned params ('.../layers/block/x', leading depth axis) listed as their per-layer '.../block_{i}/x'."""
    out = {}
    for path, shape in shapes.items():
        match = SCANNED.match(path)
        if match:
            out.update({f'{match[1]}/block_{i}/{match[2]}': tuple(shape[1:]) for i in range(shape[0])})
        else:
            out[path] = tuple(shape)
    return out


def rescan(arrays: dict[str, np.ndarray], target: set[str]) -> dict[str, np.ndarray]:
    """Per-layer arrays stacked into the scanned params of `target` (unchanged where it is unscanned)."""
    out, stacks = {}, {}
    for path, array in arrays.items():
        match = UNSCANNED.match(path)
        scanned = match and f'{match[1]}/layers/block/{match[3]}'
        if scanned in target:
            stacks.setdefault(scanned, {})[int(match[2])] = array
        else:
            out[path] = array
    for path, layers in stacks.items():
        out[path] = np.stack([layers[i] for i in range(len(layers))])
    return out


def _header(path: str, what: str) -> dict[str, tuple[tuple[int, ...], str]]:
    from safetensors import safe_open

    if not os.path.isfile(path):
        raise ImportWeightsError(f'{what} = {path!r} does not exist; name a Hugging Face model.safetensors file.')
    try:
        with safe_open(path, framework='numpy') as handle:
            return {k: (tuple(handle.get_slice(k).get_shape()), handle.get_slice(k).get_dtype()) for k in handle.keys()}
    except Exception as error:  # safetensors raises several types for a file that is not its format
        raise ImportWeightsError(f'{what} = {path!r} is not a readable safetensors file ({error}).') from error


def _tower_cfg(model: VLPConfig, tower: str) -> Any:
    return model.text if tower == 'text' else model.vision


def _depth_in_file(keys: set[str], entries: list[Entry]) -> int:
    """Layers the file holds: the count of consecutive layer indices with a block's first key."""
    first = next(e for e in entries if '/block_0/' in e.vlp)
    depth = 0
    while first.hf.replace('.0.', f'.{depth}.', 1) in keys:
        depth += 1
    return depth


def _spans(what: str, first: int, count: int) -> str:
    """'file layer 3' or 'file layers 0-5': layers first .. first + count - 1."""
    return f'{what} layer {first}' if count == 1 else f'{what} layers {first}-{first + count - 1}'


def _file_fusion_layers(layers: int, cfg: Any, layout: str, tower: str, what: str, path: str) -> int:
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


def _shape_hint(path: str, shape: tuple[int, ...], want: tuple[int, ...]) -> str:
    """The option that sets the differing dimension of a tensor, as 'set KEY=VALUE'."""
    tower = path.split('/')[0]
    if '/xattn/' in path and path.endswith(('key/kernel', 'value/kernel')) and shape[:1] == want[:1]:
        return f"set model.vision.width={shape[1]} (the checkpoint's encoder_width)"
    rows_differ = bool(shape) and len(shape) == len(want) and shape[0] != want[0] and shape[1:] == want[1:]
    if rows_differ and path.endswith('token_embed/embedding'):
        return f'set model.text.vocab_size={shape[0]}'
    if rows_differ and path == 'text/pos_embedding':
        return f'set model.text.max_positions={shape[0]}'
    if rows_differ and path.endswith('type_embedding'):
        return f'set model.text.type_vocab_size={shape[0]}'
    if path.startswith(('vision/pos_embedding', 'vision/patch_embed')):
        return "set model.image_size and model.vision.patch_size to the checkpoint's"
    if path.endswith('_proj/kernel'):
        return "set model.embed_dim to the checkpoint's projection size"
    return f"set model.{tower}.width, num_heads and mlp_dim to the checkpoint's"


def plan(path: str, tower: str, model: VLPConfig, target: dict[str, tuple[int, ...]], what: str) -> Plan:
    """Checks `path` against a model's param shapes (`target`, unscanned paths) reading only its header."""
    header = _header(path, what)
    detected = hf_layouts.detect(list(header))
    if detected is None:
        raise ImportWeightsError(
            f'{what} = {path!r} matches none of the layouts {hf_layouts.LAYOUTS} '
            f'(first key {next(iter(header), None)!r}); '
            'name a BertModel, ViTModel or CLIPModel safetensors file.'
        )
    layout, prefix = detected
    if tower not in hf_layouts.TOWER_OF[layout]:
        raise ImportWeightsError(
            f'{what} = {path!r} is a {layout} file, which has no {tower} tower; name another file.'
        )
    cfg = _tower_cfg(model, tower)
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
    layers = _depth_in_file(keys, layer_entries)
    fusion = _file_fusion_layers(layers, cfg, layout, tower, what, path)
    pairs, fresh, covered, cross_fresh = [], [], set(), []
    for entry in hf_layouts.entries(layout, tower, cfg.depth, fusion):
        key = prefix + entry.hf
        in_file, in_model = key in keys, entry.vlp in target
        if in_file and in_model:
            shape = header[key][0]
            want = TRANSFORMS[entry.kind].hf_shape(target[entry.vlp])
            if entry.kind == 'vocab':
                want = (model.text.vocab_size, target[entry.vlp][1])
            if tuple(shape) != tuple(want):
                hint = _shape_hint(entry.vlp, tuple(shape), tuple(want))
                raise ImportWeightsError(
                    f'{what} = {path!r}: tensor {key} has shape {shape} but model param {entry.vlp} '
                    f'needs {want}; {hint}.'
                )
            pairs.append((legacy.get(key, key), entry))
            covered.add(entry.vlp)
        elif in_file and entry.optional != 'model':
            rows = header[key][0][0] if header[key][0] else None
            raise ImportWeightsError(
                f'{what} = {path!r} has {key} but the model has no param {entry.vlp}; '
                f'{hf_layouts.option_hint(entry.vlp, True, rows)}.'
            )
        elif in_model and hf_layouts.CROSS_PARAM.search(entry.vlp):
            cross_fresh.append(entry.vlp)
        elif in_model and entry.optional == 'file':
            fresh.append(entry.vlp)
        elif in_model:
            raise ImportWeightsError(
                f'{what} = {path!r} has no tensor {key} for model param {entry.vlp}; '
                f'{hf_layouts.option_hint(entry.vlp, False)} or name a file that has it.'
            )
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
            f'{_spans("file", 0, cfg.depth)} -> {_spans("text", 0, cfg.depth)}, '
            f'{_spans("file", cfg.depth, fusion)} -> {_spans("fusion", 0, fusion)} (self-attention, MLP, their '
            f'LayerNorms{", cross-attention" if cross_imported else ""})'
        )
        left_fresh_what = f'the cross-attention of {_spans("fusion", 0, fusion)} (xattn, ln_xattn)'
    elif total_fusion:
        left_fresh = tuple(sorted(p for p in target if p.startswith(f'{tower}/fusion/')))
        left_fresh_what = f'{_spans("fusion", 0, total_fusion)} ({tower}/fusion/)'
    tower_prefix = {'bert': prefix, 'vit': prefix, 'clip': f'{tower}_model.'}[layout]
    used = {key for key, _ in pairs}
    unused = tuple(sorted(k for k in file_keys if k.startswith(tower_prefix) and k not in used))
    if layout != 'clip':
        unused = tuple(sorted(k for k in file_keys if k not in used))
    return Plan(path, layout, tuple(pairs), unused, tuple(fresh), mapping, left_fresh, left_fresh_what)


def load(plan_: Plan, target: dict[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
    """{unscanned param path: float32 array in vlp_jax's shape} for every pair of the plan."""
    from safetensors import safe_open

    out = {}
    with safe_open(plan_.path, framework='numpy') as handle:
        for key, entry in plan_.pairs:
            array = np.asarray(handle.get_tensor(key)).astype(PARAM_DTYPE)
            out[entry.vlp] = TRANSFORMS[entry.kind].to_vlp(array, target[entry.vlp])
    return out


def import_tower(
    path: str, tower: str, model: VLPConfig, params: PyTree, what: str | None = None
) -> tuple[dict[str, np.ndarray], Plan]:
    """({param path: array} for `params`' layout (scanned or not), the plan) from one file.

    The word table's arrays hold only the file's rows (`place` keeps the padding rows)."""
    what = what or f'model.{tower}.init'
    shapes = {k: tuple(np.shape(v)) for k, v in flat(params).items()}
    target = unscanned_shapes(shapes)
    plan_ = plan(path, tower, model, target, what)
    return rescan(load(plan_, target), set(shapes)), plan_


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
        if sharding is None:  # host params (numpy)
            out[path] = array if rows is None else np.where(np.arange(len(array))[:, None] < rows, array, leaf)
            continue
        new = jax.make_array_from_callback(array.shape, sharding, lambda index, a=array: a[index])
        if rows is not None:
            keep = jax.jit(
                lambda n, o, r=rows: jnp.where(jnp.arange(o.shape[0])[:, None] < r, n, o), out_shardings=sharding
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
    new = jax.tree_util.tree_map_with_path(lambda p, leaf: placed.get(_path_key(p), leaf), params)
    return new, plan_


def configured_inits(config: Any) -> list[tuple[str, str]]:
    """[(tower, path)] of the towers whose `model.<tower>.init` names a file (vision first)."""
    model = config.model
    inits = [(tower, str(model[tower].get('init', '') or '')) for tower in ('vision', 'text')]
    return [(tower, path) for tower, path in inits if path]


def check_inits(config: Any) -> None:
    """Reads only the headers: every configured file fits the model (ImportWeightsError otherwise)."""
    inits = configured_inits(config)
    if not inits:
        return
    from flax import linen as nn

    from vlp_jax import state as state_lib

    model = state_lib.create_model(config)
    boxed = jax.eval_shape(lambda: model.init(jax.random.key(0), *state_lib.dummy_inputs(config))['params'])
    shapes = {k: tuple(v.shape) for k, v in flat(nn.meta.unbox(boxed)).items()}
    for tower, path in inits:
        plan(path, tower, model.config, unscanned_shapes(shapes), f'model.{tower}.init')


def imported_params(config: Any, model: VLPConfig, params: PyTree) -> tuple[dict[str, jax.Array], list[str]]:
    """({path: array in its sharding} from every configured file, one summary line per file)."""
    arrays, lines = {}, []
    for tower, path in configured_inits(config):
        tower_arrays, plan_ = import_tower(path, tower, model, params)
        arrays.update(tower_arrays)
        lines.append(f'model.{tower}.init: {plan_.summary(tower)}')
    return place(params, arrays), lines


def main(argv: list[str] | None = None) -> int:
    """`python -m vlp_jax.models.importers export CHECKPOINT OUT_DIR --layout bert|vit|clip`."""
    from vlp_jax.models import exporters

    return exporters.main(argv if argv is not None else sys.argv[1:])


if __name__ == '__main__':
    sys.exit(main())
