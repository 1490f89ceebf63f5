"""Multi-process training on localhost: 2 processes x 4 fake CPU devices against 1 process x 8.

The 2-process runs go through launch/local_multiprocess.sh, the launcher users run, which gives
each process the coordinator environment that vlp_jax.parallel hands to jax.distributed.initialize.
"""

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import FAST_OVERRIDES, REPO, TINY_CONFIG, read_metrics, run_cli

LAUNCHER = os.path.join(REPO, 'launch', 'local_multiprocess.sh')
STEPS = 20  # checkpoints at 10 and 20 (FAST_OVERRIDES), eval at 20
TRAIN_ARGS = ('--config', f'{TINY_CONFIG}:steps={STEPS}', *FAST_OVERRIDES, '--config.log_every=1')
# A silent peer (stopped, or a lost host) is declared dead after this long, and the others stop.
HEARTBEAT_S = 20


def process_env(devices):
    return dict(
        os.environ,
        XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}',
        PYTHONPATH=REPO,
        TF_CPP_MIN_LOG_LEVEL='2',
        VLP_JAX_HEARTBEAT_TIMEOUT_S=str(HEARTBEAT_S),
    )


def launch_two(workdir, args=TRAIN_ARGS):
    """`launch/local_multiprocess.sh 2 python -m vlp_jax.train ...` with 4 devices per process, in the background."""
    return subprocess.Popen(
        ['bash', LAUNCHER, '2', sys.executable, '-m', 'vlp_jax.train', *args, '--workdir', str(workdir)],
        cwd=REPO,
        env=process_env(4),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def run_two(workdir, timeout=600):
    launcher = launch_two(workdir)
    try:
        stdout, stderr = launcher.communicate(timeout=timeout)
    finally:
        launcher.kill()
    assert launcher.returncode == 0, f'launcher exited {launcher.returncode}:\n{stdout}\n{stderr}'
    return stdout


def final_metrics(stdout, prefix=''):
    """The last JSON line that `prefix` starts (process 0's, from the launcher)."""
    lines = [line[len(prefix) :] for line in stdout.splitlines() if line.startswith(prefix + '{')]
    return json.loads(lines[-1])


def losses(workdir):
    return {record['step']: record['train/loss'] for record in read_metrics(workdir) if 'train/loss' in record}


def eval_metrics(workdir):
    return {key: value for record in read_metrics(workdir) for key, value in record.items() if key.startswith('eval/')}


@pytest.fixture(scope='module')
def one_process(tmp_path_factory):
    workdir = tmp_path_factory.mktemp('one_by_eight')
    result = run_cli('vlp_jax.train', [*TRAIN_ARGS, '--workdir', str(workdir)], devices=8)
    return workdir, json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope='module')
def two_processes(tmp_path_factory):
    workdir = tmp_path_factory.mktemp('two_by_four')
    stdout = run_two(workdir)
    return workdir, stdout


def test_two_processes_train_like_one(one_process, two_processes):
    one_dir, one_final = one_process
    two_dir, stdout = two_processes
    assert '[0] starting a new run in' in stdout and 'on 8 device(s)' in stdout
    one_losses, two_losses = losses(one_dir), losses(two_dir)
    assert sorted(two_losses) == list(range(1, STEPS + 1))
    np.testing.assert_allclose([two_losses[s] for s in one_losses], list(one_losses.values()), rtol=1e-4)
    assert eval_metrics(two_dir) == pytest.approx(eval_metrics(one_dir), rel=1e-4, abs=1e-6)
    assert final_metrics(stdout, '[0] ') == pytest.approx(one_final, rel=1e-4, abs=1e-6)
    # One process writes the run's files; orbax writes one checkpoint per step for both.
    assert sorted(p.name for p in two_dir.iterdir()) == ['checkpoints', 'config.json', 'metrics.jsonl', 'tensorboard']
    assert sorted(p.name for p in (two_dir / 'checkpoints').iterdir()) == ['10', '20']


def train_processes(launcher_pid):
    """The `python -m vlp_jax.train` children of a launcher (its other children copy their output)."""
    children = subprocess.run(['pgrep', '-P', str(launcher_pid)], capture_output=True, text=True).stdout.split()
    found = []
    for pid in map(int, children):
        try:
            cmdline = pathlib.Path(f'/proc/{pid}/cmdline').read_bytes().split(b'\0')
        except FileNotFoundError:
            continue
        if cmdline[1:3] == [b'-m', b'vlp_jax.train']:  # not the launcher's subshells, whose arguments hold it too
            found.append(pid)
    return found


def wait_for(path, processes, timeout=600):
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert all(p.poll() is None for p in processes), 'a process ended before ' + str(path)
        assert time.monotonic() < deadline, f'no {path} after {timeout} s'
        time.sleep(0.05)


@pytest.mark.slow
def test_two_processes_resume_after_both_are_killed(tmp_path, two_processes):
    workdir = tmp_path / 'killed'
    launcher = launch_two(workdir)
    try:
        wait_for(workdir / 'checkpoints' / '10', [launcher])
        pids = train_processes(launcher.pid)
        assert len(pids) == 2, pids
        for pid in pids:  # a pre-empted host: no warning, no clean-up
            os.kill(pid, signal.SIGKILL)
        stdout, stderr = launcher.communicate(timeout=120)
    finally:
        launcher.kill()
    assert launcher.returncode != 0
    assert not (workdir / 'checkpoints' / str(STEPS)).exists(), 'killed too late: the run had finished'

    stdout = run_two(workdir)
    assert '[0] resumed from checkpoint at step 10' in stdout
    reference_dir, reference_stdout = two_processes
    reference = losses(reference_dir)
    resumed = losses(workdir)
    assert sorted(resumed) == sorted(reference)
    np.testing.assert_allclose([resumed[s] for s in reference], list(reference.values()), rtol=1e-6)
    assert eval_metrics(workdir) == eval_metrics(reference_dir)
    assert final_metrics(stdout, '[0] ') == final_metrics(reference_stdout, '[0] ')


@pytest.mark.slow
def test_sigterm_stops_both_processes_at_one_checkpointed_step_and_they_resume(tmp_path, two_processes):
    """A preemption notice to the job: both processes agree on a step, checkpoint it together, exit 0."""
    workdir = tmp_path / 'preempted'
    launcher = launch_two(workdir, (*TRAIN_ARGS, '--config.checkpoint_every=1000'))
    try:
        wait_for(workdir / 'metrics.jsonl', [launcher])
        os.kill(launcher.pid, signal.SIGTERM)  # the launcher forwards it to every process
        stdout, stderr = launcher.communicate(timeout=120)
    finally:
        launcher.kill()
    assert launcher.returncode == 0, stderr
    stopped = {
        int(line.split('checkpointed step ')[1].split(';')[0]) for line in stdout.splitlines() if 'received' in line
    }
    assert len(stopped) == 1 and sorted(os.listdir(workdir / 'checkpoints')) == [str(stopped.pop())]
    run_two(workdir)
    reference = losses(two_processes[0])
    resumed = losses(workdir)
    np.testing.assert_allclose([resumed[s] for s in reference], list(reference.values()), rtol=1e-6)


def free_port():
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize(
    'victim, how',
    [
        (1, signal.SIGKILL),  # a crashed worker: its connections close and the other process stops at once
        # a hung coordinator: nothing closes; the heartbeat timeout stops the other (slow: the timeout)
        pytest.param(0, signal.SIGSTOP, marks=pytest.mark.slow),
    ],
    ids=['worker_killed', 'coordinator_hung'],
)
def test_survivor_exits_nonzero_when_a_peer_dies(tmp_path, victim, how):
    """Processes started by hand: on a pod no local launcher stops the survivor, it must stop by itself."""
    workdir = tmp_path / 'run'
    args = [*TRAIN_ARGS, '--config.total_steps=100000', '--workdir', str(workdir)]
    port = free_port()
    processes = []
    try:
        for index in range(2):
            env = process_env(4)
            env.update(JAX_COORDINATOR_ADDRESS=f'127.0.0.1:{port}', JAX_NUM_PROCESSES='2', JAX_PROCESS_ID=str(index))
            with open(tmp_path / f'{index}.log', 'w') as log:
                processes.append(
                    subprocess.Popen(
                        [sys.executable, '-m', 'vlp_jax.train', *args], cwd=REPO, env=env, stdout=log, stderr=log
                    )
                )
        wait_for(workdir / 'checkpoints' / '10', processes)  # mid-training
        processes[victim].send_signal(how)
        start = time.monotonic()
        survivor = processes[1 - victim]
        try:
            returncode = survivor.wait(timeout=300)
        except subprocess.TimeoutExpired:
            pytest.fail(f'process {1 - victim} still running 5 minutes after process {victim} got {how.name}')
        took = time.monotonic() - start
        log = (tmp_path / f'{1 - victim}.log').read_text()
        assert returncode != 0, log[-3000:]
        assert took < 300
    finally:
        for process in processes:
            process.kill()  # SIGKILL ends a stopped process too
            process.wait()


@pytest.mark.parametrize(
    'settings, message',
    [
        ({'JAX_NUM_PROCESSES': '2', 'JAX_PROCESS_ID': '2'}, 'process id 2 is not in [0, 2)'),
        ({'JAX_NUM_PROCESSES': 'two', 'JAX_PROCESS_ID': '0'}, "JAX_NUM_PROCESSES='two' must be an integer"),
    ],
)
def test_a_wrong_launch_environment_is_one_line(tmp_path, settings, message):
    env = {**process_env(1), 'JAX_COORDINATOR_ADDRESS': f'127.0.0.1:{free_port()}', **settings}
    result = subprocess.run(
        [sys.executable, '-m', 'vlp_jax.train', *TRAIN_ARGS, '--workdir', str(tmp_path / 'run')],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]  # one line
    assert result.stderr.startswith(f'error: {message}'), result.stderr
    assert not (tmp_path / 'run').exists()
