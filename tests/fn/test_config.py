"""ParamConfig: a frozen attrs record with validated fields."""

import attrs
import pytest
from pyrsistent import PMap, pmap

from nytorch_fn import ParamConfig


def test_defaults():
    cfg = ParamConfig()
    assert cfg.operational is True
    assert cfg.clone is True
    assert isinstance(cfg.tags, PMap) and len(cfg.tags) == 0


def test_frozen():
    cfg = ParamConfig()
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        cfg.operational = False  # type: ignore[misc]
    assert cfg.operational is True


def test_evolve_returns_new_record_and_leaves_old():
    cfg = ParamConfig()
    new = attrs.evolve(cfg, operational=False, clone=False)
    assert (new.operational, new.clone) == (False, False)
    assert (cfg.operational, cfg.clone) == (True, True)
    assert new is not cfg


def test_tags_mapping_is_converted_and_not_aliased():
    source = {"is_weight": True}
    cfg = ParamConfig(tags=source)
    assert isinstance(cfg.tags, PMap)
    assert cfg.tags["is_weight"] is True
    source["is_weight"] = False
    source["other"] = 1
    assert cfg.tags == pmap({"is_weight": True})


def test_equal_configs_compare_equal():
    assert ParamConfig(tags={"a": 1}) == ParamConfig(tags={"a": 1})
    assert ParamConfig(operational=False) != ParamConfig()


@pytest.mark.parametrize("field", ["operational", "clone"])
@pytest.mark.parametrize("bad", [1, 0, "yes", None])
def test_bool_fields_refuse_non_bools(field, bad):
    with pytest.raises(TypeError, match=field) as info:
        ParamConfig(**{field: bad})
    assert "bool" in str(info.value)


@pytest.mark.parametrize("bad", [["a"], "tags", 3])
def test_tags_refuse_non_mappings(bad):
    with pytest.raises(TypeError, match="mapping"):
        ParamConfig(tags=bad)
