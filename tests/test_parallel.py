"""Host <-> global array helpers and the encoders' output layout, on 8 fake CPU devices."""

import textwrap

from conftest import FAST_OVERRIDES, TINY_CONFIG, run_on_devices

EIGHT_DEVICE_SCRIPT = textwrap.dedent("""
    import jax, numpy as np
    from vlp_jax import parallel, setup as setup_lib
    from vlp_jax.config import apply_overrides, split_overrides
    from vlp_jax.config_files import load_config_file
    assert jax.device_count() == 8
    config = load_config_file(sys.argv[1])
    apply_overrides(config, split_overrides(sys.argv[2:])[1])
    run_setup = setup_lib.build(config)
    mesh = run_setup.mesh
    host = np.arange(16 * 3, dtype=np.float32).reshape(16, 3)
    sharded = parallel.host_to_global(host, parallel.batch_sharding(mesh, 2))
    assert len(sharded.addressable_shards) == 8 and not sharded.is_fully_replicated
    np.testing.assert_array_equal(parallel.to_host(sharded), host)
    # The encoders hand back replicated embeddings: readable on every process of a multi-host mesh.
    params = run_setup.init_state()['params']
    encode_images, encode_texts = run_setup.encoders()
    images = parallel.host_to_global(np.zeros((16, 64, 64, 3), np.float32), parallel.batch_sharding(mesh, 4))
    ids = parallel.host_to_global(np.full((16, 24), 101, np.int32), parallel.batch_sharding(mesh, 2))
    mask = parallel.host_to_global(np.ones((16, 24), np.int32), parallel.batch_sharding(mesh, 2))
    for out in (encode_images(params, images), encode_texts(params, ids, mask)):
        assert out.sharding.is_fully_replicated and out.shape == (16, config.model.embed_dim), out.sharding
        assert parallel.to_host(out).shape == (16, config.model.embed_dim)
    print('EIGHT_OK')
""")


def test_global_arrays_and_replicated_encoder_outputs_on_eight_devices():
    result = run_on_devices('import sys\n' + EIGHT_DEVICE_SCRIPT, TINY_CONFIG, *FAST_OVERRIDES)
    assert result.returncode == 0 and 'EIGHT_OK' in result.stdout, result.stderr[-3000:]
