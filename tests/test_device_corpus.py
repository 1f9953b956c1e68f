"""``data.on_device``: the train split copied to the devices once and each step's windows cut there."""

import numpy as np
import pytest

from gpt2jax.data import loader
from gpt2jax.training import loop, memory
from gpt2jax.training.trainer import build_trainer
from tests.helpers import compact_config


@pytest.mark.parametrize("sampling", ["epochs", "uniform"])
def test_the_windows_cut_on_the_devices_are_the_batches_the_host_sends(data_dir, sampling):
    # 16 rows in 2 micro-batches over the 8 fake devices: the micro-batch axis and the row sharding both show.
    config = compact_config(data_dir, batch_size=16, grad_accum_steps=2, sampling=sampling, seed=3)
    config.data.on_device = True
    trainer = build_trainer(config)
    data = loader.prepared_data(config)
    corpus = loop.device_corpus(trainer, data)
    assert corpus.dtype == data.train.shards[0].dtype and corpus.shape == (len(data.train),)
    for step in (0, 1, 40):
        host, device = trainer.train_batch(data.train, step), trainer.train_batch(corpus, step)
        for sent, cut in zip(host, device):
            assert cut.shape == sent.shape == (2, 8, config.model.block_size) and cut.dtype == sent.dtype
            assert cut.sharding.is_equivalent_to(sent.sharding, cut.ndim)
            np.testing.assert_array_equal(np.asarray(cut), np.asarray(sent))


def test_runs_of_one_process_copy_the_corpus_once_and_train_as_from_the_host(data_dir, tmp_path):
    def final(workdir, on_device: bool, seed: int) -> dict:
        config = compact_config(data_dir, steps=6, log_every=2, eval_every=6, checkpoint_every=6, seed=seed)
        config.data.on_device = on_device
        return loop.run(config, tmp_path / workdir)

    loop._DEVICE_CORPUS.clear()
    on_device = final("device", True, seed=0)
    (copy,) = loop._DEVICE_CORPUS.values()
    final("device_other_seed", True, seed=1)  # a sweep's next point: the same tokens on the same devices
    assert list(loop._DEVICE_CORPUS.values()) == [copy]
    from_host = final("host", False, seed=0)
    for key in ("train_loss", "val_loss", "grad_norm"):
        assert on_device[key] == from_host[key], key


def test_a_train_split_past_the_memory_is_refused_before_it_is_copied(data_dir):
    trainer = build_trainer(compact_config(data_dir))
    memory.check_step_fits(trainer, corpus_bytes=1_000)
    with pytest.raises(
        ValueError, match=r"8 copies of the .* GiB train split \(data.on_device\).*leave data.on_device off"
    ):
        memory.check_step_fits(trainer, corpus_bytes=10**15)
