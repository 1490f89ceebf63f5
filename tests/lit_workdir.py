"""One LiT run through the CLI, shared by test_locked_towers.py and test_api.py (the CI budget has room
for one): 8 fake CPU devices, FSDP, the image side locked. Trained once per pytest session."""

from conftest import FAST_OVERRIDES, TINY_CONFIG, run_cli

STEPS = 6
LIT = 'vision/.*|image_proj/.*'  # LiT: the whole image side, projection included, is locked
FSDP = (
    '--config.mesh.data=1',
    '--config.mesh.fsdp=8',
    "--config.mesh.rules=(('batch',('data','fsdp')),('embed','fsdp'),('mlp','model'),('heads','model'),"
    "('kv',None),('vocab','model'),('length',None),('patch',None),('proj',None))",
)
# The config the run used, minus the mesh (which only says where the arrays lived).
OVERRIDES = (*FAST_OVERRIDES, f'--config.optim.frozen={LIT}')


def lit_workdir(tmp_path_factory):
    """The trained workdir; the first caller in a session trains it, later ones find it done."""
    workdir = tmp_path_factory.getbasetemp() / 'lit_fsdp_run'
    if not (workdir / 'done').exists():
        args = ['--config', f'{TINY_CONFIG}:steps={STEPS}', '--workdir', str(workdir), *OVERRIDES, *FSDP]
        run_cli('vlp_jax.train', args, devices=8)
        (workdir / 'done').touch()
    return workdir
