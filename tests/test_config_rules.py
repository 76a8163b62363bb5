"""Every setting's rule, declared once, drives validation and the command line: each field of
FitConfig is fed every bad value its rule names, through Python and through the flag text."""

from __future__ import annotations

import math
import warnings
from dataclasses import fields, replace

import pytest
from typer.testing import CliRunner

from lore_rm import FitConfig, LoreError
from lore_rm.cli import app
from lore_rm.cli.fit_options import parse_setting
from lore_rm.constraints import (
    Choices,
    Flag,
    Interval,
    Several,
    Word,
    bad_values,
    describe,
    rule_of,
)

FIELDS = {f.name: f for f in fields(FitConfig)}
CASES = [(name, bad) for name, f in FIELDS.items() for bad in bad_values(rule_of(f))]


def configured(name: str, value) -> FitConfig:
    """The default recipe with ``name`` set to ``value``, validated (the recipe itself is
    checked as a field: ``for_recipe`` takes it by position)."""
    if name == "recipe":
        cfg = replace(FitConfig(), recipe=value)
        cfg.validate()
        return cfg
    return FitConfig.for_recipe("default", **{name: value})


def test_every_field_declares_a_rule_its_defaults_meet():
    for recipe in ("default", "paper"):
        cfg = FitConfig.for_recipe(recipe)
        for name, f in FIELDS.items():
            rule = rule_of(f)
            assert rule, f"{name} declares no rule"
            assert any(c.accepts(getattr(cfg, name)) for c in rule), (recipe, name)


def test_every_field_has_bad_values():
    assert {name for name, _ in CASES} == set(FIELDS)


@pytest.mark.parametrize(("name", "bad"), CASES, ids=lambda v: repr(v)[:30])
def test_every_bad_value_of_every_field_is_refused_in_one_line(name, bad):
    with pytest.raises(LoreError, match=f"^{name} must be ") as err:
        configured(name, bad)
    assert "\n" not in str(err.value)


def _text(value) -> str:
    if isinstance(value, tuple):
        return ",".join(map(str, value))
    return str(value)


@pytest.mark.parametrize(("name", "bad"), CASES, ids=lambda v: repr(v)[:30])
def test_every_bad_value_is_refused_from_the_command_line_text(name, bad):
    """The flag's text is read by the rule, then validated: one of the two says no, naming
    the flag or the field (text that reads as a good value is not a bad one)."""
    f = FIELDS[name]
    try:
        value = parse_setting(f, _text(bad))
    except LoreError as exc:
        assert str(exc).startswith(f"--{name.replace('_', '-')}: cannot read ")
        return
    if any(c.accepts(value) for c in rule_of(f)):
        return  # e.g. True reads as "True", a good flag; 1 as the integer 1
    with pytest.raises(LoreError, match=f"^{name} must be "):
        configured(name, value)


def test_every_default_reads_back_from_its_flag_text():
    cfg = FitConfig.for_recipe("default")
    for name, f in FIELDS.items():
        value = getattr(cfg, name)
        text = "none" if value is None else _text(value)
        assert parse_setting(f, text) == value, name


def test_the_vocabularies_come_from_the_literal_types():
    from typing import get_args

    from lore_rm.fit import config

    assert config.SOLVERS == get_args(config.Solver) == ("adam-alternating", "lbfgs")
    assert config.WEIGHTS == ("simplex", "signed", "auto")
    assert rule_of(FIELDS["init"]) == (Choices(config.INITS),)
    from lore_rm.fit import start

    assert start.INITS is config.INITS


def test_the_rules_say_what_they_take():
    assert describe(rule_of(FIELDS["weight_decay"])) == "'auto' or a non-negative number"
    assert describe(rule_of(FIELDS["cv_folds"])) == "an integer >= 2"
    assert describe(rule_of(FIELDS["validation_fraction"])) == "a number in [0, 1)"
    assert describe(rule_of(FIELDS["prune_threshold"])) == "none or a non-negative number"
    assert describe((Several(Interval(int, 1)),)) == "one or more positive integers"
    assert describe((Flag(), Word("auto"))) == "true or false or 'auto'"


def test_booleans_are_checked_too():
    """calibrate="no" used to pass as a truthy string."""
    with pytest.raises(LoreError, match="calibrate must be true or false, got 'no'"):
        FitConfig.for_recipe("default", calibrate="no")


def test_tuples_may_be_given_as_any_sequence():
    assert FitConfig.for_recipe("default", rank_grid=range(1, 4)).rank_grid == (1, 2, 3)
    assert FitConfig.for_recipe("default", warmup=[0.1, 0.9]).warmup == (0.1, 0.9)


def test_from_dict_names_the_keys_it_does_not_know():
    d = FitConfig.for_recipe("default").to_dict()
    with pytest.warns(UserWarning, match="ignored: shiny_new_knob, zeta"):
        cfg = FitConfig.from_dict({**d, "zeta": 1, "shiny_new_knob": True})
    assert cfg == FitConfig.for_recipe("default")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert FitConfig.from_dict(d) == cfg  # a round trip warns about nothing


def test_a_bad_flag_ends_the_command_in_one_line_before_any_work():
    res = CliRunner().invoke(app, ["demo", "--calibrate", "maybe", "--n-seen", "2"])
    assert res.exit_code == 2
    assert "--calibrate: cannot read 'maybe' as true or false" in res.output
    res = CliRunner().invoke(app, ["demo", "--cv-folds", "1", "--n-seen", "2"])
    assert res.exit_code == 2 and "cv_folds must be an integer >= 2, got 1" in res.output


def test_nan_is_no_number():
    assert not Interval(float, 0).accepts(math.nan)
    assert not Interval(float).accepts(math.inf)


def _commands(typer_app, prefix=""):
    for c in typer_app.registered_commands:
        yield prefix + (c.name or c.callback.__name__), c.callback
    for g in typer_app.registered_groups:
        yield from _commands(g.typer_instance, f"{prefix}{g.name} ")


def test_every_command_turns_lore_errors_into_one_line():
    """One decorator (cli.common.one_line_errors) instead of a try / except per command."""
    commands = dict(_commands(app))
    assert len(commands) > 15
    assert [name for name, cb in commands.items() if not getattr(cb, "one_line_errors", 0)] == []


def _option_defaults(command) -> dict:
    import inspect

    return {
        name: getattr(p.default, "default", p.default)
        for name, p in inspect.signature(command).parameters.items()
    }


def test_flags_that_restate_a_config_default_agree_with_it():
    """The serve limits, the backbone queue and the demo's population sizes keep their own
    flags (units and a curated subset); their defaults are the dataclasses'."""
    from lore_rm.cli.demo import demo
    from lore_rm.cli.serve import serve
    from lore_rm.evaluate.simulate import PopulationConfig
    from lore_rm.serve.batching import Batching
    from lore_rm.serve.schemas import Limits

    flags, limits, queue = _option_defaults(serve), Limits(), Batching()
    for name in ("max_batch", "max_comparisons", "max_candidates", "max_text_chars"):
        assert flags[name] == getattr(limits, name), name
    assert flags["max_json_items"] == limits.max_json_items
    assert flags["max_body_mb"] * 2**20 == limits.max_body_bytes
    assert (flags["micro_batch"], flags["max_wait_ms"]) == (queue.max_texts, queue.max_wait_ms)
    assert flags["chunk_ms"] == queue.chunk_ms
    flags, population = _option_defaults(demo), PopulationConfig()
    for name in ("d", "true_rank", "n_seen", "n_unseen"):
        assert flags[name] == getattr(population, name), name
