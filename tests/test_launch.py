"""launch/: each launcher's --dry-run output, and its process handling with stand-ins for the real tools.

No JAX, gcloud or SLURM: the commands the launchers would run are read back from their dry-run
lines (shlex), and fake `gcloud`, `srun` and `scontrol` on PATH record what they were asked to do.
"""

import os
import shlex
import signal
import subprocess
import sys
import tarfile
import textwrap
import time

import pytest
from conftest import REPO

LOCAL = os.path.join(REPO, 'launch', 'local_multiprocess.sh')
TPU = os.path.join(REPO, 'launch', 'tpu_pod.sh')
SLURM = os.path.join(REPO, 'launch', 'gpu_slurm.sbatch')
TRAIN = ('python', '-m', 'vlp_jax.train', '--config', 'configs/shapes_tiny.py:steps=100', '--workdir')


# Settings the launchers read from the environment: a test sets the ones it means.
LAUNCH_PREFIXES = ('TPU_', 'SLURM_', 'VLP_JAX_', 'LOCAL_MP_', 'JAX_COORDINATOR', 'JAX_NUM_PROCESSES', 'JAX_PROCESS_ID')
LAUNCH_NAMES = {'DRY_RUN', 'TASKS_PER', 'GPUS_PER_NODE', 'PYTHON', 'JAX_LOCAL_DEVICE_IDS'}


def clean_env(**settings):
    env = {k: v for k, v in os.environ.items() if not k.startswith(LAUNCH_PREFIXES) and k not in LAUNCH_NAMES}
    return {**env, **settings}


def run(args, env=None, timeout=60):
    return subprocess.run(
        ['bash', *args], cwd=REPO, env=env or clean_env(), capture_output=True, text=True, timeout=timeout
    )


def commands(stdout, marker='+ '):
    """The commands a dry run prints, as argument lists."""
    return [shlex.split(line[len(marker) :]) for line in stdout.splitlines() if line.startswith(marker)]


def write_executable(path, text):
    path.write_text(textwrap.dedent(text))
    path.chmod(0o755)


# ---------------------------------------------------------------- local_multiprocess.sh


def test_local_dry_run_prints_each_process_environment_and_command():
    env = clean_env(XLA_FLAGS='--xla_force_host_platform_device_count=4')
    result = run([LOCAL, '--dry-run', '--port', '12345', '2', *TRAIN, 'work dir'], env=env)
    assert result.returncode == 0, result.stderr
    assert 'XLA_FLAGS=--xla_force_host_platform_device_count=4' in result.stdout.splitlines()[0]
    lines = [line for line in result.stdout.splitlines() if line.startswith('[')]
    assert len(lines) == 2
    for index, line in enumerate(lines):
        prefix, rest = line.split(' ', 1)
        assert prefix == f'[{index}]'
        words = shlex.split(rest)
        assert words[0] == 'env'
        assignments = dict(word.split('=', 1) for word in words[1:5])
        assert assignments == {
            'JAX_COORDINATOR_ADDRESS': '127.0.0.1:12345',
            'JAX_COORDINATOR_BIND_ADDRESS': '127.0.0.1:12345',
            'JAX_NUM_PROCESSES': '2',
            'JAX_PROCESS_ID': str(index),
        }
        assert words[5:] == [*TRAIN, 'work dir']


def test_local_dry_run_gives_each_process_its_gpus():
    result = run([LOCAL, '--dry-run', '--gpus-per-process', '2', '2', 'python', 'x.py'])
    lines = [line for line in result.stdout.splitlines() if line.startswith('[')]
    assert 'JAX_LOCAL_DEVICE_IDS=0,1 ' in lines[0] and 'JAX_LOCAL_DEVICE_IDS=2,3 ' in lines[1], lines


@pytest.mark.parametrize('args', [['x', 'echo'], ['0', 'echo'], ['2'], ['--bogus', '2', 'echo']])
def test_local_usage_errors_exit_2(args):
    result = run([LOCAL, *args])
    assert result.returncode == 2, (result.stdout, result.stderr)


def test_local_runs_n_processes_with_the_coordinator_environment_and_prefixed_output():
    script = 'echo "id=$JAX_PROCESS_ID of $JAX_NUM_PROCESSES at $JAX_COORDINATOR_ADDRESS"; echo "to stderr" >&2'
    result = run([LOCAL, '--port', '23456', '3', 'bash', '-c', script])
    assert result.returncode == 0, result.stderr
    assert sorted(result.stdout.splitlines()) == [f'[{i}] id={i} of 3 at 127.0.0.1:23456' for i in range(3)]
    assert sorted(result.stderr.splitlines()) == [f'[{i}] to stderr' for i in range(3)]


def test_local_one_failure_stops_the_others_and_sets_the_exit_status():
    # Process 1 fails; 0 and 2 would run for a minute and must be stopped (SIGTERM) at once.
    script = (
        'if [ "$JAX_PROCESS_ID" = 1 ]; then sleep 0.5; echo "last words" >&2; exit 7; fi; '
        'trap "echo stopped; exit 143" TERM; sleep 60 & wait'
    )
    start = time.monotonic()
    result = run([LOCAL, '3', 'bash', '-c', script])
    assert result.returncode == 7, (result.stdout, result.stderr)
    assert time.monotonic() - start < 20
    assert '[1] last words' in result.stderr
    assert 'process 1 exited with status 7' in result.stderr
    assert sorted(result.stdout.splitlines()) == ['[0] stopped', '[2] stopped']


def test_local_process_that_ignores_sigterm_is_killed_after_the_grace_period():
    # Process 0 fails at once, so process 1 is often stopped before it has opened its output FIFOs:
    # the launcher once waited forever on that process's line prefixers (about one run in two).
    script = 'if [ "$JAX_PROCESS_ID" = 0 ]; then exit 3; fi; trap "" TERM; sleep 60; echo "not reached"'
    env = clean_env(LOCAL_MP_KILL_GRACE_S='1')
    for _ in range(6):
        start = time.monotonic()
        result = run([LOCAL, '2', 'bash', '-c', script], env=env, timeout=30)
        assert result.returncode == 3 and time.monotonic() - start < 20, (result.stdout, result.stderr)
        assert 'not reached' not in result.stdout


def test_local_sigterm_to_the_launcher_reaches_every_process(tmp_path):
    script = (
        f'trap "touch {tmp_path}/stopped.$JAX_PROCESS_ID; exit 0" TERM; '
        f'touch {tmp_path}/up.$JAX_PROCESS_ID; sleep 60 & wait'
    )
    launcher = subprocess.Popen(
        ['bash', LOCAL, '2', 'bash', '-c', script], cwd=REPO, env=clean_env(), stdout=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 20
        while not all((tmp_path / f'up.{i}').exists() for i in range(2)):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        launcher.send_signal(signal.SIGTERM)
        assert launcher.wait(timeout=20) == 0  # every process stopped cleanly: the launcher reports success
    finally:
        launcher.kill()
    assert all((tmp_path / f'stopped.{i}').exists() for i in range(2))


# ---------------------------------------------------------------- tpu_pod.sh

TPU_TRAIN = (
    '--config',
    'configs/shapes_tiny.py:steps=2000',
    '--workdir',
    'gs://my-bucket/runs/tiny',
    "--config.loss.form='sigmoid'",
)


def worker_script(stdout):
    return stdout.split('# the worker script ~/vlp_jax_run.sh:\n', 1)[1]


def test_tpu_dry_run_prints_every_gcloud_command():
    args = [TPU, '--dry-run', '--zone', 'us-central2-b', '--project', 'proj', '--name', 'pod', '--spot']
    result = run([*args, '--accelerator-type', 'v4-32', '--', *TPU_TRAIN])
    assert result.returncode == 0, result.stderr
    cmds = commands(result.stdout)
    where = ['--zone=us-central2-b', '--project=proj']
    tpu = ['gcloud', 'compute', 'tpus', 'tpu-vm']
    assert cmds[0] == [*tpu, 'describe', 'pod', *where, '--format=value(state)']
    assert cmds[1] == [*tpu, 'delete', 'pod', *where, '--quiet']  # only when it is not READY
    assert cmds[2] == [
        *tpu,
        'create',
        'pod',
        *where,
        '--accelerator-type=v4-32',
        '--version=tpu-ubuntu2204-base',
        '--spot',
    ]
    assert 'git ls-files' in result.stdout and 'tar --null -T - -czf' in result.stdout  # the copy of this checkout
    scp = next(cmd for cmd in cmds if cmd[4] == 'scp')
    assert scp[-4:] == ['pod:~/', *where, '--worker=all']
    assert [os.path.basename(path) for path in scp[5:-4]] == ['vlp_jax_run.sh', 'vlp_jax_src.tar.gz']
    ssh = [cmd[5:] for cmd in cmds if cmd[4] == 'ssh']
    assert ssh == [
        ['pod', *where, '--worker=all', '--command=bash ~/vlp_jax_run.sh setup'],
        ['pod', *where, '--worker=all', '--command=bash ~/vlp_jax_run.sh start'],
        ['pod', *where, '--worker=0', '--command=bash ~/vlp_jax_run.sh logs'],
        ['pod', *where, '--worker=all', '--command=bash ~/vlp_jax_run.sh status'],
    ]
    script = worker_script(result.stdout)
    assert 'pip install --quiet -e "$CODE_DIR" "jax[$JAX_EXTRA]"' in script and '\nJAX_EXTRA=tpu\n' in script
    assert 'export VLP_JAX_DISTRIBUTED=1' in script
    assert '-m vlp_jax.train "${TRAIN_ARGS[@]}"' in script
    # gs:// is mounted with gcsfuse on every worker and train gets the mounted path.
    assert '\nBUCKET=my-bucket\n' in script and 'gcsfuse' in script
    train_args = next(line for line in script.splitlines() if line.startswith('TRAIN_ARGS='))
    words = shlex.split(train_args[len('TRAIN_ARGS=(') : -1])
    assert words == [
        '--config',
        'configs/shapes_tiny.py:steps=2000',
        '--workdir',
        '/gcs/my-bucket/runs/tiny',
        TPU_TRAIN[-1],
    ]


def test_tpu_worker_script_is_valid_bash(tmp_path):
    result = run([TPU, '--dry-run', '--zone', 'z', '--', '--config', 'c.py', '--workdir=/shared/run'])
    path = tmp_path / 'vlp_jax_run.sh'
    path.write_text(worker_script(result.stdout))
    assert subprocess.run(['bash', '-n', str(path)]).returncode == 0
    assert '--workdir=/shared/run' in path.read_text() and "\nBUCKET=''\n" in path.read_text()


@pytest.mark.parametrize(
    'accelerator, version',
    [('v6e-16', 'v2-alpha-tpuv6e'), ('v5p-64', 'v2-alpha-tpuv5'), ('v5litepod-16', 'v2-alpha-tpuv5-lite')],
)
def test_tpu_runtime_version_follows_the_accelerator(accelerator, version):
    result = run([TPU, '--dry-run', '--zone', 'z', '--accelerator-type', accelerator, '--', *TPU_TRAIN])
    create = next(cmd for cmd in commands(result.stdout) if cmd[4] == 'create')
    assert f'--accelerator-type={accelerator}' in create and f'--version={version}' in create


def test_tpu_git_source_and_settings_from_the_environment():
    env = clean_env(TPU_ZONE='europe-west4-a', TPU_NAME='envpod', TPU_ACCELERATOR_TYPE='v5p-16')
    url = 'https://github.com/example/vlp_jax.git'
    result = run([TPU, '--dry-run', '--source', url, '--ref', 'v1', '--jax-extra', 'tpu', '--', *TPU_TRAIN], env=env)
    assert result.returncode == 0, result.stderr
    cmds = commands(result.stdout)
    assert cmds[0][5:7] == ['envpod', '--zone=europe-west4-a']
    scp = next(cmd for cmd in cmds if cmd[4] == 'scp')
    assert [os.path.basename(path) for path in scp[5:-3]] == ['vlp_jax_run.sh']  # nothing to copy but the script
    assert 'git ls-files' not in result.stdout
    script = worker_script(result.stdout)
    assert f'\nSOURCE={url}\n' in script and '\nREF=v1\n' in script and 'git clone --depth 1' in script


def test_tpu_delete_and_logs():
    result = run([TPU, '--dry-run', '--zone', 'z', '--name', 'pod', '--delete'])
    assert commands(result.stdout) == [['gcloud', 'compute', 'tpus', 'tpu-vm', 'delete', 'pod', '--zone=z', '--quiet']]
    result = run([TPU, '--dry-run', '--zone', 'z', '--name', 'pod', '--logs'])
    assert [cmd[-2:] for cmd in commands(result.stdout)] == [
        ['--worker=0', '--command=bash ~/vlp_jax_run.sh logs'],
        ['--worker=all', '--command=bash ~/vlp_jax_run.sh status'],
    ]


@pytest.mark.parametrize(
    'args, message',
    [
        (['--', *TPU_TRAIN], '--zone'),
        (['--zone', 'z', '--', '--config', 'c.py'], '--workdir'),
        (['--zone', 'z', '--', '--config', 'c.py', '--workdir', 'relative/dir'], 'absolute path'),
        (['--zone', 'z', '--bogus'], 'unknown option'),
    ],
)
def test_tpu_usage_errors_exit_2(args, message):
    result = run([TPU, '--dry-run', *args])
    assert result.returncode == 2 and message in result.stderr, (result.stdout, result.stderr)


def fake_gcloud(tmp_path, state, status_rc=0):
    """A `gcloud` that logs its arguments, answers describe with `state` and keeps what scp sends."""
    bin_dir = tmp_path / 'bin'
    bin_dir.mkdir()
    write_executable(
        bin_dir / 'gcloud',
        f"""\
        #!/usr/bin/env bash
        printf '%s\\n' "$*" >> {tmp_path}/gcloud.log
        case "$4" in
          describe) [ -n "{state}" ] && echo "{state}"; [ -n "{state}" ] ;;
          scp) mkdir -p {tmp_path}/sent; for f in "${{@:5}}"; do [ -f "$f" ] && cp "$f" {tmp_path}/sent/; done; true ;;
          ssh) case "$*" in *status*) exit {status_rc} ;; esac ;;
        esac
        """,
    )
    return clean_env(PATH=f'{bin_dir}:{os.environ["PATH"]}')


@pytest.mark.parametrize(
    'state, created, deleted', [('', True, False), ('PREEMPTED', True, True), ('READY', False, False)]
)
def test_tpu_creates_the_slice_only_when_missing_or_preempted(tmp_path, state, created, deleted):
    env = fake_gcloud(tmp_path, state)
    result = run([TPU, '--zone', 'z', '--name', 'pod', '--', *TPU_TRAIN], env=env)
    assert result.returncode == 0, (result.stdout, result.stderr)
    log = (tmp_path / 'gcloud.log').read_text().splitlines()
    verbs = [line.split()[3] for line in log]
    assert ('create' in verbs) == created and ('delete' in verbs) == deleted, log
    assert verbs[-4:] == ['ssh', 'ssh', 'ssh', 'ssh'] and verbs.index('scp') < verbs.index('ssh')
    # The copy of this checkout holds the package and the configs, and none of the ignored files.
    with tarfile.open(tmp_path / 'sent' / 'vlp_jax_src.tar.gz') as archive:
        names = set(archive.getnames())
    assert {'vlp_jax/train.py', 'configs/shapes_tiny.py', 'pyproject.toml', 'launch/tpu_pod.sh'} <= names
    assert not any(name.startswith(('.venv/', 'workdirs/')) for name in names)


def test_tpu_exit_status_is_the_workers_status_and_delete_after_only_on_success(tmp_path):
    env = fake_gcloud(tmp_path, 'READY', status_rc=1)
    result = run([TPU, '--zone', 'z', '--delete-after', '--', *TPU_TRAIN], env=env)
    assert result.returncode == 1
    assert 'delete' not in (tmp_path / 'gcloud.log').read_text()


# ---------------------------------------------------------------- gpu_slurm.sbatch


def test_slurm_script_asks_for_requeue_and_an_early_sigterm():
    header = [line for line in open(SLURM) if line.startswith('#SBATCH')]
    assert '#SBATCH --requeue\n' in header and '#SBATCH --signal=B:TERM@120\n' in header


@pytest.mark.parametrize('how', ['env', 'flag'])
def test_slurm_dry_run_one_task_per_gpu(how):
    env = clean_env(SLURM_JOB_NUM_NODES='4', GPUS_PER_NODE='8', PYTHON='/opt/venv/bin/python')
    args = [SLURM, '--dry-run'] if how == 'flag' else [SLURM]
    if how == 'env':
        env['DRY_RUN'] = '1'
    result = run([*args, '--config', 'configs/shapes_tiny.py', '--workdir', '/shared/run a'], env=env)
    assert result.returncode == 0, result.stderr
    [srun] = commands(result.stdout)
    assert srun == [
        'srun',
        '--nodes=4',
        '--ntasks-per-node=8',
        '--kill-on-bad-exit=1',
        f'--chdir={REPO}',
        '/opt/venv/bin/python',
        '-m',
        'vlp_jax.train',
        '--config',
        'configs/shapes_tiny.py',
        '--workdir',
        '/shared/run a',
    ]
    assert 'export' not in result.stdout  # JAX takes the coordinator, count and id from SLURM
    assert 'scontrol requeue' in result.stdout


def test_slurm_dry_run_one_task_per_node_sees_all_its_gpus():
    env = clean_env(DRY_RUN='1', TASKS_PER='node', GPUS_PER_NODE='4', VLP_JAX_HEARTBEAT_TIMEOUT_S='60')
    result = run([SLURM, '--config', 'c.py', '--workdir', '/w'], env=env)
    assert result.returncode == 0, result.stderr
    [srun] = commands(result.stdout)
    assert '--ntasks-per-node=1' in srun
    exports = [line for line in result.stdout.splitlines() if line.startswith('export ')]
    assert exports == ['export JAX_LOCAL_DEVICE_IDS=0,1,2,3', 'export VLP_JAX_HEARTBEAT_TIMEOUT_S=60']


def test_slurm_bad_mode_exits_2():
    result = run([SLURM, '--config', 'c.py'], env=clean_env(DRY_RUN='1', TASKS_PER='socket'))
    assert result.returncode == 2 and 'TASKS_PER' in result.stderr


def fake_slurm(tmp_path, srun_rc, on_term='exit 0'):
    """`srun` that records its arguments, then runs `on_term` on SIGTERM (train: checkpoint, exit 0) or
    exits `srun_rc` after 0.5 s; `scontrol` that records its arguments."""
    bin_dir = tmp_path / 'bin'
    bin_dir.mkdir()
    write_executable(
        bin_dir / 'srun',
        f"""\
        #!/usr/bin/env bash
        echo $$ > {tmp_path}/srun.pid
        printf '%s\\n' "$*" > {tmp_path}/srun.args
        trap 'echo TERM >> {tmp_path}/srun.signal; {on_term}' TERM
        if [ {srun_rc} != 0 ]; then sleep 0.5; exit {srun_rc}; fi
        for i in $(seq 600); do sleep 0.1; done
        """,
    )
    write_executable(bin_dir / 'scontrol', f'#!/usr/bin/env bash\nprintf "%s\\n" "$*" >> {tmp_path}/scontrol.log\n')
    env = clean_env(PATH=f'{bin_dir}:{os.environ["PATH"]}', SLURM_JOB_ID='4242', PYTHON=sys.executable)
    return {**env, 'STOP_GRACE_S': '2'}


def start_and_signal_job(tmp_path, env):
    job = subprocess.Popen(['bash', SLURM, '--config', 'c.py', '--workdir', '/w'], cwd=REPO, env=env, text=True)
    try:
        deadline = time.monotonic() + 20
        while not (tmp_path / 'srun.args').exists():
            assert time.monotonic() < deadline and job.poll() is None
            time.sleep(0.05)
        time.sleep(0.2)
        job.send_signal(signal.SIGTERM)  # what --signal=B:TERM@120 sends to the batch script
        return job.wait(timeout=20)
    finally:
        job.kill()
        try:  # what the requeue would end
            os.kill(int((tmp_path / 'srun.pid').read_text()), signal.SIGKILL)
        except (FileNotFoundError, ProcessLookupError, ValueError):
            pass


def test_slurm_sigterm_reaches_srun_and_requeues_the_job(tmp_path):
    assert start_and_signal_job(tmp_path, fake_slurm(tmp_path, srun_rc=0)) == 0
    assert (tmp_path / 'srun.signal').read_text() == 'TERM\n'
    assert (tmp_path / 'scontrol.log').read_text() == 'requeue 4242\n'
    assert '-m vlp_jax.train --config c.py --workdir /w' in (tmp_path / 'srun.args').read_text()


def test_slurm_requeues_after_the_grace_period_when_the_tasks_keep_running(tmp_path):
    # e.g. a train that does not act on SIGTERM: the requeue must still happen before SLURM's kill.
    start = time.monotonic()
    assert start_and_signal_job(tmp_path, fake_slurm(tmp_path, srun_rc=0, on_term='true')) == 143
    assert time.monotonic() - start < 15
    assert (tmp_path / 'scontrol.log').read_text() == 'requeue 4242\n'


def test_slurm_failure_is_the_exit_status_and_is_not_requeued(tmp_path):
    env = fake_slurm(tmp_path, srun_rc=3)
    result = run([SLURM, '--config', 'c.py', '--workdir', '/w'], env=env)
    assert result.returncode == 3, (result.stdout, result.stderr)
    assert not (tmp_path / 'scontrol.log').exists()


def test_tpu_copy_ships_tracked_files_only_and_says_what(tmp_path):
    """An untracked run folder (the 385 MB a user had) stays here; an edited tracked file goes as it is on
    disk, a deleted one is left out; the launcher says how many files it ships."""
    repo = tmp_path / 'checkout'
    (repo / 'launch').mkdir(parents=True)
    (repo / 'launch' / 'tpu_pod.sh').write_text(open(TPU).read())
    for name in ('train.py', 'edited.py', 'deleted.py'):
        (repo / name).write_text(f'# {name}\n')
    git = lambda *args: subprocess.run(['git', '-C', str(repo), *args], check=True, capture_output=True)
    git('init', '-q')
    git('add', '.')
    git('-c', 'user.name=t', '-c', 'user.email=t@t', 'commit', '-q', '-m', 'files')
    (repo / 'edited.py').write_text('# edited, not committed\n')
    (repo / 'deleted.py').unlink()
    (repo / 'runs' / 'big').mkdir(parents=True)
    (repo / 'runs' / 'big' / 'checkpoint.bin').write_bytes(b'x' * 1000)
    (repo / 'notes.txt').write_text('untracked\n')
    env = fake_gcloud(tmp_path, 'READY')
    result = run([str(repo / 'launch' / 'tpu_pod.sh'), '--zone', 'z', '--', *TPU_TRAIN], env=env)
    assert result.returncode == 0, (result.stdout, result.stderr)
    with tarfile.open(tmp_path / 'sent' / 'vlp_jax_src.tar.gz') as archive:
        assert sorted(archive.getnames()) == ['edited.py', 'launch/tpu_pod.sh', 'train.py']
        assert archive.extractfile('edited.py').read() == b'# edited, not committed\n'
    said = next(line for line in result.stdout.splitlines() if line.startswith('# ships '))
    assert said.startswith('# ships 3 tracked files') and '2 untracked files stay here' in said, said
