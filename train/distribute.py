"""Data-parallel training with Keras' own distribution API (JAX backend).

``devices`` in TrainConfig picks how many of ``keras.distribution.list_devices()`` train:
1 = none (the plain single-device path), N = the first N, 0 = all of them. Over more than one,
``keras.distribution.DataParallel`` replicates every variable and splits each global batch
(``batch_size``) along its first axis, one equal share per device; the gradient of the global
batch's loss is what XLA computes across them, so there is no averaging to write here and one
step matches a single device's step on the same batch. Checkpoints hold the plain weights, so a
run can resume on another device count.

Several hosts: when ``KERAS_DISTRIBUTION_JOB_ADDRESSES`` (Keras' variables: also
``KERAS_DISTRIBUTION_NUM_PROCESSES``, ``KERAS_DISTRIBUTION_PROCESS_ID``) or JAX's own
``JAX_COORDINATOR_ADDRESS`` is set, ``keras.distribution.initialize`` calls
``jax.distributed.initialize`` first; then each process feeds its own share of every global
batch (:func:`process_shard`) and the devices of all hosts form one mesh.
"""
from __future__ import annotations

import contextlib
import logging
import os

import keras

_log = logging.getLogger(__name__)

MULTI_HOST_ENV = ("KERAS_DISTRIBUTION_JOB_ADDRESSES", "JAX_COORDINATOR_ADDRESS")


def pick_devices(devices: int, batch_size: int) -> list[str]:
    """The devices a run with ``devices`` (TrainConfig) trains on, after checking the backend and
    that ``batch_size`` splits evenly; [] means the plain single-device path."""
    if devices == 1:
        return []
    if keras.backend.backend() != "jax":
        raise ValueError(f"devices: data-parallel training needs KERAS_BACKEND=jax; this process runs "
                         f"{keras.backend.backend()!r} (devices: 1 trains on one device with any backend)")
    if any(os.environ.get(name) for name in MULTI_HOST_ENV) and not _multi_host_started():
        keras.distribution.initialize()  # jax.distributed.initialize, from the environment
    found = keras.distribution.list_devices()
    if devices > len(found):
        raise ValueError(f"devices: {devices} asked for, but Keras sees {len(found)}: {found}")
    chosen = found[: devices or len(found)]
    if batch_size % len(chosen):
        raise ValueError(f"batch_size: {batch_size} does not split evenly over {len(chosen)} devices; "
                         f"use a multiple of {len(chosen)}")
    return chosen


def _multi_host_started() -> bool:
    import jax

    return jax.distributed.is_initialized()


@contextlib.contextmanager
def data_parallel(devices: int, batch_size: int):
    """Inside: models built, loaded and trained are data-parallel over ``pick_devices``; yields the
    device list ([] for one device, where nothing changes)."""
    chosen = pick_devices(devices, batch_size)
    if not chosen:
        yield chosen
        return
    # Our PyDataset is no tf.data pipeline, so Keras cannot shard it per host: Batches does (process_shard).
    distribution = keras.distribution.DataParallel(devices=chosen, auto_shard_dataset=False)
    _log.info("data-parallel over %d devices (%s), %d per device of each batch of %d, %d process(es)",
              len(chosen), ", ".join(chosen), batch_size // len(chosen), batch_size, distribution.num_processes)
    with distribution.scope():
        yield chosen


def replicas() -> int:
    """How many ways the current distribution splits a batch (1 when there is none)."""
    distribution = keras.distribution.distribution()
    return 1 if distribution is None else int(distribution.device_mesh.devices.size)


def process_shard() -> tuple[int, int]:
    """(this process, processes): which share of each global batch this host feeds."""
    distribution = keras.distribution.distribution()
    if distribution is None or distribution.num_processes == 1:
        return 0, 1
    import jax

    return jax.process_index(), distribution.num_processes


def round_up(n: int) -> int:
    """``n`` rounded up to a multiple of the replicas: a sharded batch must split evenly."""
    k = replicas()
    return -(-n // k) * k
