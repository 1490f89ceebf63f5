"""Caption images with a trained captioning run: `python -m vlp_jax.generate --workdir DIR (--images FILES |
--config.eval.sets=...) [--beam N]`. Prints one JSON line per image: {"image": path, "caption": ...} for
--images (files decoded and centre-cropped as evaluation does), or {"image_id": i, "caption": ...} for the
images of the run's first captioning eval set. The run's DIR/config.json gives the model, the prompt and the
decoding settings (`eval.captioning.*`; --beam overrides the beam width); the latest checkpoint the params.
VQA answers are not generated yet (docs/decoder.md).
"""

from __future__ import annotations

import json
import sys

from absl import flags

from vlp_jax import config_files
from vlp_jax.config import ConfigError
from vlp_jax.train import FLAGS, fail, initialize_and_check, parse_flags

flags.DEFINE_list('images', None, 'Image files to caption (comma-separated, or repeat the flag).')
flags.DEFINE_integer('beam', None, 'Beam width (default: the run config eval.captioning.beam; 1 = greedy).')


def main() -> None:
    overrides = parse_flags(sys.argv, __doc__, hidden=('stop_at_step',))
    if not FLAGS.workdir:
        fail('pass --workdir DIR: a trained captioning run.')
    from vlp_jax.paths import as_path

    run_dir = as_path(FLAGS.workdir)
    if not config_files.has_saved_config(run_dir):
        fail(f'{run_dir} has no config.json (not a vlp_jax workdir).')
    if FLAGS.beam is not None:
        overrides = [*overrides, ('eval.captioning.beam', str(FLAGS.beam))]
    try:
        config = config_files.saved_config(run_dir, overrides)
        derived = initialize_and_check(config)
    except ConfigError as error:
        fail(str(error))
    if config.objective != 'captioning':
        fail(f"{run_dir} is a run of objective {config.objective!r}; generate needs a 'captioning' run.")

    from vlp_jax import setup as setup_lib
    from vlp_jax.checkpointing import CheckpointError, restore_params_from
    from vlp_jax.config import settings_of
    from vlp_jax.data.batch import normalise_images
    from vlp_jax.evaluators.captioning import CaptionEvalSettings, caption_images, caption_texts, decode_settings
    from vlp_jax.objectives.blip import prompt_ids

    try:
        run_setup = setup_lib.build(config, derived=derived)
        params = restore_params_from(str(run_dir), run_setup.abstract_state['params'])
    except (CheckpointError, ConfigError) as error:
        fail(str(error))
    size, length = int(config.model.image_size), int(config.model.max_text_len)
    prompt = str(config.loss.lm.prompt)
    settings = decode_settings(settings_of(config, CaptionEvalSettings), prompt_ids(prompt), length)
    if FLAGS.images:
        from vlp_jax.data.tf_augment import eval_images

        encoded = []
        for path in FLAGS.images:
            with open(path, 'rb') as f:
                encoded.append(f.read())
        images, kept = eval_images(encoded, size)
        names = [FLAGS.images[k] for k in kept]
        for path in sorted(set(FLAGS.images) - set(names)):
            print(f'skipped {path}: not a decodable image', file=sys.stderr)
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


if __name__ == '__main__':
    main()
