"""The schema: sections, declared checks and types, and a run's identity."""

import dataclasses
import typing

import pytest

from signvote.experiment import config as cfg
from signvote.experiment.config import (
    FIELDS,
    ConfigError,
    TrainConfig,
    resolve,
    trajectory_id,
    trajectory_key,
)


def test_every_field_is_declared_in_a_section():
    by_section = {s: [n for n in FIELDS if cfg.section_of(n) == s] for s in cfg.SECTIONS}
    assert by_section[cfg.RECOVERY] == ["backend", "checkpoint_every", "max_restarts",
                                         "dist_timeout"]
    assert by_section[cfg.OUTPUT] == ["data_dir", "tensorboard", "threads", "device", "compile",
                                       "overwrite", "out"]
    assert by_section[cfg.RECORDED] == ["eval_every", "measure_theory"]
    assert {"engine", "layout", "seed", "lr", "aggregator"} <= set(by_section[cfg.TRAJECTORY])
    assert sum(map(len, by_section.values())) == len(FIELDS)


def test_field_types_come_from_the_type_hints():
    hints = typing.get_type_hints(TrainConfig)
    for name in FIELDS:
        t = cfg.base_type(name)
        assert hints[name] in (t, t | None)
    assert cfg.base_type("lr") is float and cfg.base_type("tensorboard") is bool


def test_declared_checks_give_the_messages():
    assert cfg.FIELDS["momentum"].metadata["check"].message("momentum", 1.0) == (
        "--momentum must be in [0, 1), got 1.0")
    for name, value, message in [
        ("workers", 0, "--workers must be at least 1, got 0"),
        ("blind", -1, "--blind must be 0 or more, got -1"),
        ("lr", float("nan"), "--lr must be a finite number >= 0, got nan"),
        ("lr_decay_rate", 0.0, "--lr-decay-rate must be in (0, 1], got 0.0"),
        ("partition_gamma", 1.5, "--partition-gamma must be in [0, 1], got 1.5"),
        ("dist_timeout", float("inf"),
         "--dist-timeout must be a number of seconds in (0, 604800], got inf"),
        ("checkpoint_every", -5, "--checkpoint-every must be 0 or more, got -5"),
    ]:
        with pytest.raises(ConfigError) as caught:
            resolve(TrainConfig(**{name: value}))
        assert str(caught.value) == message
    resolve(TrainConfig(lr_decay_rate=1.0, partition_gamma=0.0, momentum=0.0))  # the edges


def test_resolve_stores_the_coerced_values():
    c = resolve(TrainConfig(lr=1, dist_timeout=60))
    assert type(c.lr) is float and type(c.dist_timeout) is float


def test_the_key_of_the_defaults_is_empty_resolved_or_not():
    assert trajectory_key(TrainConfig()) == trajectory_key(resolve(TrainConfig())) == {}


def test_a_default_that_depends_on_other_fields_is_left_out_of_the_key():
    sgd = resolve(TrainConfig(rule="sgd", workers=4, byzantine=1))
    assert (sgd.lr, sgd.momentum, sgd.aggregator, sgd.batch_size, sgd.aggregator_f) == (
        1e-3, 0.0, "mean", 32, 1)
    assert trajectory_key(sgd) == {"workers": 4, "rule": "sgd", "byzantine": 1}
    spelt_out = TrainConfig(rule="sgd", workers=4, byzantine=1, lr=1e-3, momentum=0.0,
                            aggregator="mean", batch_size=32, aggregator_f=1,
                            model="logregnet")
    assert trajectory_key(spelt_out) == trajectory_key(sgd)
    # the sign rules' lr under sgd is not sgd's default: kept
    assert trajectory_key(dataclasses.replace(sgd, lr=1e-4))["lr"] == 1e-4


def test_fields_outside_the_identity_do_not_change_the_key():
    base = resolve(TrainConfig(engine="dist", workers=4, byzantine=1))
    for change in ({"tensorboard": True}, {"max_restarts": 3}, {"dist_timeout": 10.0},
                   {"checkpoint_every": 0}, {"out": "elsewhere"}, {"data_dir": "/data"}):
        other = dataclasses.replace(base, **change)
        assert trajectory_key(other) == trajectory_key(base), change
        assert trajectory_id(other) == trajectory_id(base)
    for change in ({"seed": 1}, {"layout": "peer"}, {"engine": "sim"}, {"epochs": 3},
                   {"measure_theory": True}):
        assert trajectory_key(dataclasses.replace(base, **change)) != trajectory_key(base)


def test_equal_keys_are_the_same_resolved_config():
    # the key drops only the fields at the default they would take: it loses nothing
    configs = [resolve(TrainConfig(**kw)) for kw in (
        {}, {"rule": "sgd"}, {"rule": "sgd", "lr": 1e-4}, {"workers": 5}, {"byzantine": 2},
        {"byzantine": 2, "aggregator_f": 0}, {"rule": "signsgd"}, {"momentum": 0.5},
        {"aggregator": "mean"}, {"rule": "sgd", "aggregator": "majority-vote"})]
    keys = [trajectory_key(c) for c in configs]
    for a, ka in zip(configs, keys, strict=True):
        for b, kb in zip(configs, keys, strict=True):
            same = dataclasses.replace(a, out=None) == dataclasses.replace(b, out=None)
            assert (ka == kb) == same


def test_the_id_is_the_hash_of_the_sorted_key():
    import hashlib
    import json

    c = TrainConfig(workers=5, seed=2)
    text = json.dumps({"seed": 2, "workers": 5}, sort_keys=True)
    assert trajectory_id(c) == hashlib.sha1(text.encode()).hexdigest()[:12]
    assert trajectory_id(TrainConfig(lr=1)) == trajectory_id(TrainConfig(lr=1.0))


def test_a_stored_config_lacking_new_fields_reads_them_at_their_defaults():
    stored = resolve(TrainConfig(byzantine=1)).to_dict()
    del stored["measure_theory"], stored["tensorboard"]
    stored["a_field_of_a_later_signvote"] = 1
    assert trajectory_key(cfg.from_dict(stored)) == {"byzantine": 1}
