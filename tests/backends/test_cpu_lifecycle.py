"""CPU kernels in real programs: threads, forked children (pools, DataLoader workers), spawned ones.

TVM keeps one thread pool per calling thread and has no fork handler, so a
child forked from a thread that had run a kernel used to wait forever for
workers that did not survive the fork. Every child's work here runs under a
timeout, so a regression fails instead of hanging the run, and every child's
result is checked against the float64 reference.
"""
from __future__ import annotations

import multiprocessing as mp
import threading

import pytest
import torch

import einattn
from tests.helpers import assert_rel_close, zoo_inputs

pytest.importorskip("tvm")
pytestmark = pytest.mark.cpu

REL = 1e-4
TIMEOUT = 60                    # seconds for a pool's work; a hung child fails the test
INHERITED: dict = {}            # kernels a forked child finds in its copy of the parent


def run(kernel, x: dict):
    """A pool task: ``kernel`` is a Kernel (pickled to the child) or the name of an inherited one.

    It returns an array, not a tensor: a forked child that sends a tensor back copies it to shared
    memory with OpenMP, and GNU OpenMP hangs in a child of a parent that used it (torch alone).
    """
    k = INHERITED[kernel] if isinstance(kernel, str) else kernel
    return k(**x).numpy()


def inputs(count: int, **sizes) -> list[dict]:
    return [zoo_inputs("softmax", seed=i, dtype=torch.float32, **sizes) for i in range(count)]


def check(outs, xs) -> None:
    ref = einattn.compile("softmax", target="reference")
    assert len(outs) == len(xs)
    for got, x in zip(outs, xs):
        assert_rel_close(torch.as_tensor(got), ref(**{k: v.double() for k, v in x.items()}), REL, "softmax in a child")


@pytest.fixture
def kernel(monkeypatch):
    """A softmax kernel that has run in this thread on two threads, so this thread has a TVM pool."""
    monkeypatch.setenv("EINATTN_NUM_THREADS", "2")
    k = einattn.compile("softmax", target="cpu")
    check([k(**x) for x in inputs(1)], inputs(1))
    INHERITED["softmax"] = k
    yield k
    INHERITED.clear()


def in_pool(method: str, tasks: list) -> list:
    with mp.get_context(method).Pool(2) as pool:
        return pool.starmap_async(run, tasks).get(timeout=TIMEOUT)


def test_fork_pool(kernel):
    """The issue's program: the children inherit a kernel that ran in the thread that forked."""
    xs = inputs(4)
    check(in_pool("fork", [("softmax", x) for x in xs]), xs)


@pytest.mark.parametrize("method", ["forkserver", "spawn"])
def test_pickled_to_a_fresh_process(kernel, method):
    xs = inputs(2)
    check(in_pool(method, [(kernel, x) for x in xs]), xs)


class Attention(torch.utils.data.Dataset):
    def __init__(self, kernel, xs):
        self.kernel, self.xs = kernel, xs

    def __len__(self):
        return len(self.xs)

    def __getitem__(self, i):
        return self.kernel(**self.xs[i])


def test_dataloader_workers(kernel):
    xs = inputs(4)
    loader = torch.utils.data.DataLoader(Attention(kernel, xs), batch_size=None, num_workers=2,
                                         multiprocessing_context="fork", timeout=TIMEOUT)
    check(list(loader), xs)


def test_fork_while_another_thread_runs_a_kernel(kernel):
    big = inputs(1, b=1, h=4, m=1024, n=1024)[0]
    stop, calls = threading.Event(), []

    def busy():
        while not stop.is_set():
            calls.append(kernel(**big))

    t = threading.Thread(target=busy)
    t.start()
    try:
        while not calls:                     # the thread's pool exists and is at work
            stop.wait(0.01)
        xs = inputs(4)
        outs = in_pool("fork", [("softmax", x) for x in xs])
    finally:
        stop.set()
        t.join()
    check(outs, xs)
    check(calls[-1:], [big])


def test_thread_count_applies_in_every_thread(kernel, monkeypatch):
    """TVM sizes one pool per calling thread: each thread's pool gets the setting, not only the first's."""
    from einattn.backends.cpu import build as cpu
    num_threads = cpu._runtime().get_global_func("runtime.NumThreads")
    monkeypatch.setenv("EINATTN_NUM_THREADS", "1")
    seen = []

    def work():
        kernel(**inputs(1)[0])
        seen.append(num_threads())

    for _ in range(2):
        t = threading.Thread(target=work)
        t.start()
        t.join(TIMEOUT)
    assert seen == [1, 1]


def test_threads_calling_at_once(kernel):
    """Each calling thread runs on its own TVM pool; builds take a lock, calls do not."""
    xs = inputs(2)
    outs: dict = {}

    def work(i):
        outs[i] = [kernel(**xs[i]) for _ in range(20)]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT)
    for i, x in enumerate(xs):
        check(outs[i], [x] * 20)
