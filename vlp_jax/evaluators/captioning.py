"""The 'captioning' evaluator: captions the set's images with the decoder (beam search, BLIP's settings by
default) and scores them against every reference caption of the image with BLEU-4 and CIDEr-D
(evaluators/caption_metrics.py): `eval/captioning/bleu4`, `eval/captioning/cider` (a named set:
`eval/captioning/<name>/...`). With `eval.captioning.output` set, each evaluation writes the captions there as
JSON lines {"image_id": position in the evaluated set, "caption": ...}.

    --config.eval.sets='(captioning:shapes,)'

Decoding runs jit-compiled on the first device, in batches of eval.batch_size (the last one padded).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from vlp_jax.config import at_least, key, settings_of
from vlp_jax.data.batch import normalise_images
from vlp_jax.data.eval_sets import load_examples, spread_indices
from vlp_jax.data.tokenizer import BERT_SEP_ID, shared_tokenizer
from vlp_jax.decoding import DecodeSettings, decode
from vlp_jax.evaluators.base import EvalContext, EvalModel, Evaluator
from vlp_jax.evaluators.caption_metrics import caption_scores
from vlp_jax.evaluators.specs import EvalSpec
from vlp_jax.registry import EVALUATORS


@dataclasses.dataclass(frozen=True)
class CaptionEvalSettings:
    """How the 'captioning' evaluator (and `vlp_jax.generate`) decodes: BLIP's captioning defaults."""

    beam: int = key(3, 'beam width (1: greedy)', check=at_least(1))
    max_len: int = key(20, 'generated tokens at most', check=at_least(1))
    min_len: int = key(5, 'generated tokens before [SEP] may end a caption', check=at_least(1))
    length_penalty: float = key(1.0, "beam hypotheses' score: sum log p / length ** this")
    repetition_penalty: float = key(1.0, 'CTRL repetition penalty (1: none)')
    output: str = key('', 'a file the captions are written to as JSON lines at each evaluation ("": none)')


def decode_settings(settings: Any, prompt_ids: Sequence[int], max_text_len: int) -> DecodeSettings:
    """The DecodeSettings of the eval settings, `max_len` cut to what the position table holds."""
    room = max_text_len - 1 - len(prompt_ids)
    return DecodeSettings(
        max_len=min(int(settings.max_len), room),
        min_len=min(int(settings.min_len), room),
        beam=int(settings.beam),
        length_penalty=float(settings.length_penalty),
        repetition_penalty=float(settings.repetition_penalty),
        prompt=tuple(prompt_ids),
    )


def caption_texts(tokens: np.ndarray, prompt_text: str, max_text_len: int) -> list[str]:
    """Generated ids [N, T] -> strings: up to [SEP], the prompt written before them as BLIP returns them
    ("caption[len(self.prompt):]" strips it; here the prompt is not part of the output)."""
    tokenizer = shared_tokenizer(max_text_len)
    out = []
    for row in np.asarray(tokens):
        ids = list(row)
        ids = ids[: ids.index(BERT_SEP_ID)] if BERT_SEP_ID in ids else ids
        out.append(tokenizer.decode(ids).strip())
    return out


def caption_images(module: Any, params: Any, images: np.ndarray, settings: DecodeSettings, batch_size: int):
    """Normalised images [N, H, W, 3] -> generated ids [N, max_len] (jitted, fixed-size padded batches)."""
    image_tokens = jax.jit(lambda p, x: module.apply({'params': p}, x, method='image_tokens'))
    out = []
    for start in range(0, len(images), batch_size):
        chunk = images[start : start + batch_size]
        real = len(chunk)
        if real < batch_size:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch_size - real, axis=0)])
        tokens, _ = decode(module, params, image_tokens(params, chunk), None, settings)
        out.append(np.asarray(tokens)[:real])
    return np.concatenate(out)


@EVALUATORS.register('captioning', groups={'eval.captioning': CaptionEvalSettings})
class CaptioningEvaluator(Evaluator):
    def __init__(self, spec: EvalSpec, source: Any, context: EvalContext):
        super().__init__(spec, source, context)
        indices = spread_indices(len(source), context.settings.retrieval_size)
        examples, _, self.dropped = load_examples(source, indices, context.image_size)
        keep = [i for i, captions in enumerate(examples['captions']) if captions]
        self.images = normalise_images(examples['image'][keep])
        self.references = [list(examples['captions'][i]) for i in keep]
        config = context.config
        self.settings = settings_of(config, CaptionEvalSettings)
        from vlp_jax.objectives.blip import prompt_ids

        self.prompt = str(config.loss.lm.prompt)
        self.decode = decode_settings(self.settings, prompt_ids(self.prompt), context.max_text_len)

    def __call__(self, model: EvalModel) -> dict[str, float]:
        tokens = caption_images(model.module, model.params, self.images, self.decode, model.batch_size)
        captions = caption_texts(tokens, self.prompt, self.context.max_text_len)
        if self.settings.output and jax.process_index() == 0:
            os.makedirs(os.path.dirname(os.path.abspath(self.settings.output)), exist_ok=True)
            with open(self.settings.output, 'w') as f:
                for i, caption in enumerate(captions):
                    f.write(json.dumps({'image_id': i, 'caption': caption}) + '\n')
        scores = caption_scores(captions, self.references)
        named = self.spec.where and self.spec.name  # the run's own split of a source: bare keys
        prefix = f'eval/captioning/{self.spec.name}/' if named else 'eval/captioning/'
        return {prefix + name: value for name, value in scores.items()}
