"""hf_gradprune.training.accelerate_compat touches Accelerate's private lists: these tests fail if they change."""

import os

import pytest
import torch
from accelerate import Accelerator

from hf_gradprune.training.accelerate_compat import PREPARED_LISTS, forget_prepared


def test_prepared_objects_live_in_the_lists_forget_prepared_edits():
    acc = Accelerator(cpu=True)
    model = acc.prepare_model(torch.nn.Linear(3, 2))
    opt = acc.prepare_optimizer(torch.optim.SGD(model.parameters(), lr=0.1))
    loader = acc.prepare_data_loader(torch.utils.data.DataLoader(list(range(4))))
    for name in PREPARED_LISTS:
        assert isinstance(getattr(acc, name), list), name
    assert any(m is model for m in acc._models) and any(o is opt for o in acc._optimizers)
    assert any(d is loader for d in acc._dataloaders)
    forget_prepared(acc, opt, loader)
    assert not any(o is opt for o in acc._optimizers) and not any(d is loader for d in acc._dataloaders)
    assert any(m is model for m in acc._models)  # only what was named is dropped


def test_a_forgotten_optimizer_is_no_longer_saved(tmp_path):
    acc = Accelerator(cpu=True)
    model = acc.prepare_model(torch.nn.Linear(3, 2))
    old = acc.prepare_optimizer(torch.optim.SGD(model.parameters(), lr=0.1))
    acc.prepare_optimizer(torch.optim.AdamW(model.parameters(), lr=0.1))
    forget_prepared(acc, old)
    acc.save_state(str(tmp_path / "state"))
    saved = {f for f in os.listdir(tmp_path / "state") if f.startswith("optimizer")}
    assert saved == {"optimizer.bin"}  # the replacement only, not the stale one as optimizer_1.bin


def test_a_changed_accelerate_is_reported_not_guessed():
    class Changed:
        _models, _optimizers, _schedulers = [], [], []  # no _dataloaders list

    with pytest.raises(RuntimeError, match="_dataloaders.*accelerate_compat"):
        forget_prepared(Changed(), object())
