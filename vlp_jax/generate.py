"""Caption images or answer questions with a trained run: `python -m vlp_jax.generate --workdir DIR (--images FILES |
--config.eval.sets=...) [--beam N]`. Prints one JSON line per input.

- A captioning run: {"image": path, "caption": ...} for --images (files decoded and centre-cropped as evaluation
  does), or {"image_id": i, "caption": ...} for the images of the run's first captioning eval set. Decoding
  settings `eval.captioning.*` (--beam overrides the beam width).
- A VQA run: {"image": path, "question": ..., "answer": ...} for --images with --question TEXT (asked of every
  image), or {"question_id": ..., "answer": ...} for the questions of the run's first VQA eval set. `--answers
  rank` (default: ALBEF's ranking of the answer list, `eval.vqa.k`; the list of the run's VQA eval set, or
  --answer_list FILE, a JSON list as ALBEF's answer_list.json) or `--answers generate` (free generation, beam
  `eval.vqa.beam`, --beam overrides it).

The run's DIR/config.json gives the model and the settings; the latest checkpoint the params.
"""

from __future__ import annotations

import json
import sys

from absl import flags

from vlp_jax import config_files
from vlp_jax.config import ConfigError
from vlp_jax.train import FLAGS, fail, initialize_and_check, parse_flags

flags.DEFINE_list('images', None, 'Image files to caption or ask about (space- or comma-separated).')
flags.DEFINE_integer('beam', None, 'Beam width (default: the run config eval.captioning.beam / eval.vqa.beam).')
flags.DEFINE_string('question', None, 'VQA runs: the question asked of every --images file.')
flags.DEFINE_enum('answers', 'rank', ['rank', 'generate'], 'VQA runs: rank the answer list, or generate freely.')
flags.DEFINE_string('answer_list', None, 'VQA runs: a JSON file listing the candidate answers (default: the eval set).')

TASKS = ('captioning', 'vqa')


def _read_images(size: int):
    """(uint8 images, the paths that decoded) of --images; the others are named on stderr."""
    from vlp_jax.data.tf_augment import eval_images

    encoded = []
    for path in FLAGS.images:
        try:
            with open(path, 'rb') as f:
                encoded.append(f.read())
        except OSError as error:
            fail(f'cannot read --images file {path}: {error.strerror}.')
    images, kept = eval_images(encoded, size)
    names = [FLAGS.images[k] for k in kept]
    for path in sorted(set(FLAGS.images) - set(names)):
        print(f'skipped {path}: not a decodable image', file=sys.stderr)
    return images, names


def _caption(config, run_setup, params) -> None:
    from vlp_jax.config import settings_of
    from vlp_jax.data.batch import normalise_images
    from vlp_jax.evaluators.captioning import CaptionEvalSettings, caption_images, caption_texts, decode_settings
    from vlp_jax.objectives.blip import prompt_ids

    size, length = int(config.model.image_size), int(config.model.max_text_len)
    prompt = str(config.loss.lm.prompt)
    settings = decode_settings(settings_of(config, CaptionEvalSettings), prompt_ids(prompt), length)
    if FLAGS.images:
        images, names = _read_images(size)
        ids = [{'image': name} for name in names]
    else:
        from vlp_jax.evaluators.suite import build_evaluators

        sets = [e for e in build_evaluators(run_setup) if hasattr(e, 'references')]
        if not sets:
            fail('pass --images FILES, or name a captioning eval set (--config.eval.sets=...).')
        images, ids = sets[0].images, [{'image_id': i} for i in range(len(sets[0].images))]
    if len(images):
        images = images if images.dtype.kind == 'f' else normalise_images(images)
        tokens = caption_images(run_setup.model, params, images, settings, int(config.eval.batch_size))
        for key, caption in zip(ids, caption_texts(tokens, prompt, length), strict=True):
            print(json.dumps({**key, 'caption': caption}), flush=True)


def _vqa_answer_list(config, run_setup) -> tuple[str, ...]:
    """--answer_list FILE, else the answer list of the run's first VQA eval set's source."""
    if FLAGS.answer_list:
        try:
            with open(FLAGS.answer_list) as f:
                answers = json.load(f)
        except (OSError, ValueError) as error:
            fail(f'--answer_list {FLAGS.answer_list} is not a readable JSON list of answers ({error}).')
        if not isinstance(answers, list) or not answers or not all(isinstance(a, str) for a in answers):
            fail(f'--answer_list {FLAGS.answer_list} must hold a non-empty JSON list of strings.')
        return tuple(answers)
    from vlp_jax.evaluators.specs import parse_all

    for spec in parse_all(config.eval.sets):
        if spec.evaluator == 'vqa':
            source = run_setup.source_plugin(spec.source).open('test', spec.where)
            return tuple(getattr(source, 'answer_list', ()))
    fail('pass --answer_list FILE (a JSON list of answers) or --answers generate: the run has no VQA eval set.')


def _answer(config, run_setup, params) -> None:
    import numpy as np

    from vlp_jax.config import settings_of
    from vlp_jax.data.batch import normalise_images
    from vlp_jax.data.tokenizer import shared_tokenizer
    from vlp_jax.evaluators.vqa import VqaAnswerer, VqaEvalSettings, VqaSet
    from vlp_jax.objectives.vqa import VqaSettings

    size, length = int(config.model.image_size), int(config.model.max_text_len)
    if FLAGS.images:
        if not FLAGS.question:
            fail('pass --question TEXT: the question asked of every --images file.')
        images, names = _read_images(size)
        tokens = shared_tokenizer(length)([FLAGS.question] * len(names))
        data = VqaSet(normalise_images(np.asarray(images)), tokens['text_ids'], tokens['text_mask'], [], [])
        keys = [{'image': name, 'question': FLAGS.question} for name in names]
    else:
        from vlp_jax.evaluators.suite import build_evaluators

        sets = [e for e in build_evaluators(run_setup) if hasattr(e, 'answer_list')]
        if not sets:
            fail('pass --images FILES with --question TEXT, or name a VQA eval set (--config.eval.sets=...).')
        data = sets[0].data
        keys = [{'question_id': q} for q in data.question_ids]
    if not len(data.ids):
        return
    settings = settings_of(config, VqaEvalSettings)
    answer_len = int(settings_of(config, VqaSettings).answer_len)
    answerer = VqaAnswerer(run_setup.model, length, answer_len, int(config.eval.batch_size))
    if FLAGS.answers == 'rank':
        answers = answerer.rank(params, data, _vqa_answer_list(config, run_setup), int(settings.k))
    else:
        answers = answerer.generate(params, data, int(settings.beam))
    for key, answer in zip(keys, answers, strict=True):
        print(json.dumps({**key, 'answer': answer}), flush=True)


def main() -> None:
    overrides = parse_flags(sys.argv, __doc__, hidden=('stop_at_step',), list_flag='images')
    if not FLAGS.workdir:
        fail('pass --workdir DIR: a trained captioning or VQA run.')
    from vlp_jax.paths import as_path

    run_dir = as_path(FLAGS.workdir)
    if not config_files.has_saved_config(run_dir):
        fail(f'{run_dir} has no config.json (not a vlp_jax workdir).')
    try:
        objective = str(config_files.saved_config(run_dir, []).objective)
    except ConfigError as error:
        fail(str(error))
    if objective not in TASKS:
        fail(f"{run_dir} is a run of objective {objective!r}; generate needs a 'captioning' or 'vqa' run.")
    if FLAGS.beam is not None:
        group = 'eval.captioning.beam' if objective == 'captioning' else 'eval.vqa.beam'
        overrides = [*overrides, (group, str(FLAGS.beam))]
    try:
        config = config_files.saved_config(run_dir, overrides)
        derived = initialize_and_check(config)
    except ConfigError as error:
        fail(str(error))

    from vlp_jax import setup as setup_lib
    from vlp_jax.checkpointing import CheckpointError, restore_params_from

    try:
        run_setup = setup_lib.build(config, derived=derived)
        params = restore_params_from(str(run_dir), run_setup.abstract_state['params'])
    except (CheckpointError, ConfigError) as error:
        fail(str(error))
    (_caption if objective == 'captioning' else _answer)(config, run_setup, params)


if __name__ == '__main__':
    main()
