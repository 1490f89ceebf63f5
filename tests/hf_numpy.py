"""Plain-numpy forwards of Hugging Face's BertModel, ViTModel and CLIPModel, read straight from their
state-dict keys, and generators of random tensors in those layouts: the references the importers are
tested against. Written from the architectures (BERT: post-LN; ViT: pre-LN + final norm; CLIP: pre-LN,
pre-layernorm on the image embeddings, causal text mask, pooling at the highest token id); nothing here
reads vlp_jax.
"""

import numpy as np
from scipy.special import erf

NEG = -1e30  # added to masked attention logits


def gelu(x):
    return 0.5 * x * (1.0 + erf(x / np.sqrt(2.0)))


def gelu_tanh(x):
    return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x**3)))


def quick_gelu(x):
    return x / (1.0 + np.exp(-1.702 * x))


ACT = {'gelu': gelu, 'gelu_new': gelu_tanh, 'quick_gelu': quick_gelu}


def layer_norm(x, t, name, eps):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * t[f'{name}.weight'] + t[f'{name}.bias']


def linear(x, t, name, bias=True):
    y = x @ t[f'{name}.weight'].T
    return y + t[f'{name}.bias'] if bias else y


def attention(x, t, names, heads, additive, context=None):
    """names: (query, key, value, output) module names; additive: [B, 1, Lq, Lk] mask bias; keys and values
    from `context` [B, Lk, Dc] when given (BertLayer's crossattention), else from x."""
    b, length, width = x.shape
    d = width // heads
    context = x if context is None else context

    def split(h):
        return h.reshape(b, h.shape[1], heads, d).transpose(0, 2, 1, 3)

    q = split(linear(x, t, names[0]))
    k, v = (split(linear(context, t, n)) for n in names[1:3])
    logits = q @ k.transpose(0, 1, 3, 2) / np.sqrt(d) + additive
    logits = logits - logits.max(-1, keepdims=True)
    probs = np.exp(logits)
    probs = probs / probs.sum(-1, keepdims=True)
    ctx = (probs @ v).transpose(0, 2, 1, 3).reshape(b, length, width)
    return linear(ctx, t, names[3])


def padding_bias(mask):
    return np.where(np.asarray(mask)[:, None, None, :] > 0, 0.0, NEG)


def _f64(t):
    return {k: np.asarray(v, np.float64) for k, v in t.items()}


def bert_forward(t, ids, mask, heads, eps=1e-12, act='gelu', prefix=''):
    """BertModel: (last_hidden_state, pooler_output or None); token types all 0."""
    t = _f64(t)
    p = prefix
    depth = len({k[len(p) :].split('.')[2] for k in t if k.startswith(f'{p}encoder.layer.')})
    x = t[f'{p}embeddings.word_embeddings.weight'][ids] + t[f'{p}embeddings.position_embeddings.weight'][: ids.shape[1]]
    x = layer_norm(x + t[f'{p}embeddings.token_type_embeddings.weight'][0], t, f'{p}embeddings.LayerNorm', eps)
    bias = padding_bias(mask)
    for i in range(depth):
        layer = f'{p}encoder.layer.{i}.'
        names = [f'{layer}attention.self.{n}' for n in ('query', 'key', 'value')] + [f'{layer}attention.output.dense']
        x = layer_norm(x + attention(x, t, names, heads, bias), t, f'{layer}attention.output.LayerNorm', eps)
        h = ACT[act](linear(x, t, f'{layer}intermediate.dense'))
        x = layer_norm(x + linear(h, t, f'{layer}output.dense'), t, f'{layer}output.LayerNorm', eps)
    pooled = np.tanh(linear(x[:, 0], t, f'{p}pooler.dense')) if f'{p}pooler.dense.weight' in t else None
    return x, pooled


def bert_cross_layers(t, x, mask, image, heads, first, eps=1e-12, act='gelu', image_mask=None):
    """BertLayer with add_cross_attention (and ALBEF's xbert fusion layers) from layer `first` to the last:
    x = LN(x + SelfAttn(x)) [text padding mask]; x = LN(x + CrossAttn(x, image)) [image mask, default none];
    x = LN(x + MLP(x)). x: [B, L, width] hidden states of layer first - 1; image: [B, N, encoder_width]."""
    t = _f64(t)
    x, image = np.asarray(x, np.float64), np.asarray(image, np.float64)
    depth = len({k.split('.')[2] for k in t if k.startswith('encoder.layer.')})
    text_bias = padding_bias(mask)
    image_bias = 0.0 if image_mask is None else padding_bias(image_mask)
    for i in range(first, depth):
        layer = f'encoder.layer.{i}.'
        names = [f'{layer}attention.self.{n}' for n in ('query', 'key', 'value')] + [f'{layer}attention.output.dense']
        x = layer_norm(x + attention(x, t, names, heads, text_bias), t, f'{layer}attention.output.LayerNorm', eps)
        cross = [f'{layer}crossattention.self.{n}' for n in ('query', 'key', 'value')]
        cross.append(f'{layer}crossattention.output.dense')
        h = attention(x, t, cross, heads, image_bias, context=image)
        x = layer_norm(x + h, t, f'{layer}crossattention.output.LayerNorm', eps)
        h = ACT[act](linear(x, t, f'{layer}intermediate.dense'))
        x = layer_norm(x + linear(h, t, f'{layer}output.dense'), t, f'{layer}output.LayerNorm', eps)
    return x


def bert_lm_forward(t, ids, encoder_states, heads, eps=1e-12, act='gelu'):
    """BertLMHeadModel (is_decoder, add_cross_attention) -> logits [B, L, vocab]: BertModel's embeddings under
    'bert.' (token types 0); every layer x = LN(x + causal SelfAttn(x)); x = LN(x + CrossAttn(x,
    encoder_states)); x = LN(x + MLP(x)); then cls.predictions: LN(act(dense(x))) @ word_embeddings.T + bias."""
    t = _f64(t)
    depth = len({k.split('.')[3] for k in t if k.startswith('bert.encoder.layer.')})
    length = ids.shape[1]
    x = t['bert.embeddings.word_embeddings.weight'][ids] + t['bert.embeddings.position_embeddings.weight'][:length]
    x = layer_norm(x + t['bert.embeddings.token_type_embeddings.weight'][0], t, 'bert.embeddings.LayerNorm', eps)
    causal = np.where(np.tril(np.ones((length, length), bool)), 0.0, NEG)[None, None]
    states = np.asarray(encoder_states, np.float64)
    for i in range(depth):
        layer = f'bert.encoder.layer.{i}.'
        names = [f'{layer}attention.self.{n}' for n in ('query', 'key', 'value')] + [f'{layer}attention.output.dense']
        x = layer_norm(x + attention(x, t, names, heads, causal), t, f'{layer}attention.output.LayerNorm', eps)
        cross = [f'{layer}crossattention.self.{n}' for n in ('query', 'key', 'value')]
        cross.append(f'{layer}crossattention.output.dense')
        h = attention(x, t, cross, heads, 0.0, context=states)
        x = layer_norm(x + h, t, f'{layer}crossattention.output.LayerNorm', eps)
        h = ACT[act](linear(x, t, f'{layer}intermediate.dense'))
        x = layer_norm(x + linear(h, t, f'{layer}output.dense'), t, f'{layer}output.LayerNorm', eps)
    h = layer_norm(
        ACT[act](linear(x, t, 'cls.predictions.transform.dense')), t, 'cls.predictions.transform.LayerNorm', eps
    )
    return h @ t['bert.embeddings.word_embeddings.weight'].T + t['cls.predictions.bias']


def mean_pool(hidden, mask):
    """sentence-transformers' mean pooling."""
    m = np.asarray(mask, np.float64)[..., None]
    return (hidden * m).sum(1) / np.maximum(m.sum(1), 1e-9)


def patches(pixels, weight, bias=None):
    """Conv2d(kernel = stride = p) on NCHW pixels -> [B, N, width], patches in row-major order."""
    b, c, h, w = pixels.shape
    width, _, p, _ = weight.shape
    x = pixels.reshape(b, c, h // p, p, w // p, p).transpose(0, 2, 4, 1, 3, 5).reshape(b, -1, c * p * p)
    y = x @ weight.reshape(width, -1).T
    return y if bias is None else y + bias


POOLER_ACT = {'tanh': np.tanh, 'linear': lambda x: x}  # ViTConfig.pooler_act (transformers' ACT2FN names)


def vit_forward(t, pixels, heads, eps=1e-12, act='gelu', prefix='', pooler_act='tanh'):
    """ViTModel: (last_hidden_state after the final layernorm, pooler_output or None)."""
    t = _f64(t)
    p = prefix
    depth = len({k[len(p) :].split('.')[2] for k in t if k.startswith(f'{p}encoder.layer.')})
    x = patches(
        pixels,
        t[f'{p}embeddings.patch_embeddings.projection.weight'],
        t[f'{p}embeddings.patch_embeddings.projection.bias'],
    )
    cls = np.broadcast_to(t[f'{p}embeddings.cls_token'], (x.shape[0], 1, x.shape[2]))
    x = np.concatenate([cls, x], 1) + t[f'{p}embeddings.position_embeddings']
    for i in range(depth):
        layer = f'{p}encoder.layer.{i}.'
        names = [f'{layer}attention.attention.{n}' for n in ('query', 'key', 'value')] + [
            f'{layer}attention.output.dense'
        ]
        x = x + attention(layer_norm(x, t, f'{layer}layernorm_before', eps), t, names, heads, 0.0)
        h = ACT[act](linear(layer_norm(x, t, f'{layer}layernorm_after', eps), t, f'{layer}intermediate.dense'))
        x = x + linear(h, t, f'{layer}output.dense')
    x = layer_norm(x, t, f'{p}layernorm', eps)
    pooled = POOLER_ACT[pooler_act](linear(x[:, 0], t, f'{p}pooler.dense')) if f'{p}pooler.dense.weight' in t else None
    return x, pooled


def _clip_layers(x, t, tower, heads, eps, act, bias):
    depth = len({k.split('.')[3] for k in t if k.startswith(f'{tower}.encoder.layers.')})
    for i in range(depth):
        layer = f'{tower}.encoder.layers.{i}.'
        names = [f'{layer}self_attn.{n}' for n in ('q_proj', 'k_proj', 'v_proj', 'out_proj')]
        x = x + attention(layer_norm(x, t, f'{layer}layer_norm1', eps), t, names, heads, bias)
        h = ACT[act](linear(layer_norm(x, t, f'{layer}layer_norm2', eps), t, f'{layer}mlp.fc1'))
        x = x + linear(h, t, f'{layer}mlp.fc2')
    return x


def clip_text_forward(t, ids, mask, heads, eps=1e-5, act='quick_gelu'):
    """CLIPTextTransformer: pooled = final-layer-normed state at argmax(ids) (causal + padding mask)."""
    t = _f64(t)
    length = ids.shape[1]
    x = (
        t['text_model.embeddings.token_embedding.weight'][ids]
        + t['text_model.embeddings.position_embedding.weight'][:length]
    )
    causal = np.where(np.tril(np.ones((length, length))) > 0, 0.0, NEG)[None, None]
    x = _clip_layers(x, t, 'text_model', heads, eps, act, causal + padding_bias(mask))
    x = layer_norm(x, t, 'text_model.final_layer_norm', eps)
    return x[np.arange(len(ids)), ids.argmax(-1)]


def clip_vision_forward(t, pixels, heads, eps=1e-5, act='quick_gelu'):
    """CLIPVisionTransformer: pooled = post_layernorm(CLS of the last layer)."""
    t = _f64(t)
    x = patches(pixels, t['vision_model.embeddings.patch_embedding.weight'])
    cls = np.broadcast_to(t['vision_model.embeddings.class_embedding'], (x.shape[0], 1, x.shape[2]))
    x = np.concatenate([cls, x], 1) + t['vision_model.embeddings.position_embedding.weight']
    x = layer_norm(x, t, 'vision_model.pre_layrnorm', eps)
    x = _clip_layers(x, t, 'vision_model', heads, eps, act, 0.0)
    return layer_norm(x[:, 0], t, 'vision_model.post_layernorm', eps)


def dual_encoder_forward(t, hf_config, pixels, ids, mask):
    """VisionTextDualEncoderModel (ViTModel under vision_model., BertModel under text_model.), configured by its
    config.json: (image_embeds, text_embeds) = the towers' pooler_output through the bias-free projections, and
    logits_per_image = exp(logit_scale) * cos(image, text)."""
    vision, text = hf_config['vision_config'], hf_config['text_config']
    _, image_pooled = vit_forward(
        t,
        pixels,
        vision['num_attention_heads'],
        vision['layer_norm_eps'],
        vision['hidden_act'],
        'vision_model.',
        vision.get('pooler_act', 'tanh'),
    )
    _, text_pooled = bert_forward(
        t, ids, mask, text['num_attention_heads'], text['layer_norm_eps'], text['hidden_act'], 'text_model.'
    )
    image = image_pooled @ np.asarray(t['visual_projection.weight'], np.float64).T
    text = text_pooled @ np.asarray(t['text_projection.weight'], np.float64).T
    cos = (image / np.linalg.norm(image, axis=-1, keepdims=True)) @ (
        text / np.linalg.norm(text, axis=-1, keepdims=True)
    ).T
    return image, text, np.exp(np.float64(t['logit_scale'])) * cos


def clip_logits(t, text_pooled, image_pooled):
    """CLIPModel's logits_per_image: exp(logit_scale) * cos(image, text)."""
    t = _f64(t)
    text = text_pooled @ t['text_projection.weight'].T
    image = image_pooled @ t['visual_projection.weight'].T
    text = text / np.linalg.norm(text, axis=-1, keepdims=True)
    image = image / np.linalg.norm(image, axis=-1, keepdims=True)
    return np.exp(t['logit_scale']) * image @ text.T


# ---- random tensors in the real key layouts ----


def _gen(rng):
    def dense(name, out, inp, bias=True):
        d = {f'{name}.weight': rng.normal(0, inp**-0.5, (out, inp))}
        if bias:
            d[f'{name}.bias'] = rng.normal(0, 0.1, (out,))
        return d

    def norm(name, width):
        return {f'{name}.weight': 1 + rng.normal(0, 0.1, (width,)), f'{name}.bias': rng.normal(0, 0.1, (width,))}

    return dense, norm


def _f32(d):
    return {k: np.asarray(v, np.float32) for k, v in d.items()}


def bert_tensors(rng, vocab, positions, width, depth, mlp, types=2, pooler=True, prefix=''):
    dense, norm = _gen(rng)
    t = {
        'embeddings.word_embeddings.weight': rng.normal(0, 1, (vocab, width)),
        'embeddings.position_embeddings.weight': rng.normal(0, 0.3, (positions, width)),
        'embeddings.token_type_embeddings.weight': rng.normal(0, 0.3, (types, width)),
        **norm('embeddings.LayerNorm', width),
    }
    for i in range(depth):
        layer = f'encoder.layer.{i}.'
        for n in ('query', 'key', 'value'):
            t.update(dense(f'{layer}attention.self.{n}', width, width))
        t.update(dense(f'{layer}attention.output.dense', width, width))
        t.update(norm(f'{layer}attention.output.LayerNorm', width))
        t.update(dense(f'{layer}intermediate.dense', mlp, width))
        t.update(dense(f'{layer}output.dense', width, mlp))
        t.update(norm(f'{layer}output.LayerNorm', width))
    if pooler:
        t.update(dense('pooler.dense', width, width))
    return _f32({prefix + k: v for k, v in t.items()})


def bert_cross_tensors(rng, layers, width, encoder_width):
    """The crossattention tensors of BertLayers `layers` (keys and values read encoder_width-wide tokens)."""
    dense, norm = _gen(rng)
    t = {}
    for i in layers:
        cross = f'encoder.layer.{i}.crossattention.'
        t.update(dense(f'{cross}self.query', width, width))
        t.update(dense(f'{cross}self.key', width, encoder_width))
        t.update(dense(f'{cross}self.value', width, encoder_width))
        t.update(dense(f'{cross}output.dense', width, width))
        t.update(norm(f'{cross}output.LayerNorm', width))
    return _f32(t)


def vit_tensors(rng, image, patch, width, depth, mlp, pooler=True, prefix=''):
    dense, norm = _gen(rng)
    n = (image // patch) ** 2
    t = {
        'embeddings.cls_token': rng.normal(0, 1, (1, 1, width)),
        'embeddings.position_embeddings': rng.normal(0, 0.3, (1, 1 + n, width)),
        'embeddings.patch_embeddings.projection.weight': rng.normal(
            0, (3 * patch * patch) ** -0.5, (width, 3, patch, patch)
        ),
        'embeddings.patch_embeddings.projection.bias': rng.normal(0, 0.1, (width,)),
        **norm('layernorm', width),
    }
    for i in range(depth):
        layer = f'encoder.layer.{i}.'
        t.update(norm(f'{layer}layernorm_before', width))
        for name in ('query', 'key', 'value'):
            t.update(dense(f'{layer}attention.attention.{name}', width, width))
        t.update(dense(f'{layer}attention.output.dense', width, width))
        t.update(norm(f'{layer}layernorm_after', width))
        t.update(dense(f'{layer}intermediate.dense', mlp, width))
        t.update(dense(f'{layer}output.dense', width, mlp))
    if pooler:
        t.update(dense('pooler.dense', width, width))
    return _f32({prefix + k: v for k, v in t.items()})


def _clip_tower(rng, tower, width, depth, mlp):
    dense, norm = _gen(rng)
    t = {}
    for i in range(depth):
        layer = f'{tower}.encoder.layers.{i}.'
        t.update(norm(f'{layer}layer_norm1', width))
        for name in ('q_proj', 'k_proj', 'v_proj', 'out_proj'):
            t.update(dense(f'{layer}self_attn.{name}', width, width))
        t.update(norm(f'{layer}layer_norm2', width))
        t.update(dense(f'{layer}mlp.fc1', mlp, width))
        t.update(dense(f'{layer}mlp.fc2', width, mlp))
    return t


def clip_tensors(rng, vocab, positions, text_width, image, patch, vision_width, depth, mlp, proj, logit_scale=4.6):
    dense, norm = _gen(rng)
    n = (image // patch) ** 2
    t = {
        'text_model.embeddings.token_embedding.weight': rng.normal(0, 1, (vocab, text_width)),
        'text_model.embeddings.position_embedding.weight': rng.normal(0, 0.3, (positions, text_width)),
        **_clip_tower(rng, 'text_model', text_width, depth, mlp),
        **norm('text_model.final_layer_norm', text_width),
        'vision_model.embeddings.class_embedding': rng.normal(0, 1, (vision_width,)),
        'vision_model.embeddings.patch_embedding.weight': rng.normal(
            0, (3 * patch * patch) ** -0.5, (vision_width, 3, patch, patch)
        ),
        'vision_model.embeddings.position_embedding.weight': rng.normal(0, 0.3, (1 + n, vision_width)),
        **norm('vision_model.pre_layrnorm', vision_width),
        **_clip_tower(rng, 'vision_model', vision_width, depth, mlp),
        **norm('vision_model.post_layernorm', vision_width),
        **dense('visual_projection', proj, vision_width, bias=False),
        **dense('text_projection', proj, text_width, bias=False),
        'logit_scale': np.array(logit_scale),
    }
    return _f32(t)
