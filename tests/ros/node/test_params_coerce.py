"""The node's parameters are type-checked by the same function as config files (gcross_core.config.coerce):
same conversions, same refusals, the parameter named."""
import pytest

from gcross_core.config import coerce
from gcross_core.errors import ConfigError
from gcross_ros.node.params import SegmentNodeParams


@pytest.mark.parametrize("name, value", [("queue_size", 2.5), ("voxel_size_m", "fine"), ("publish_rendered", 1),
                                         ("map_frame", 3)])
def test_a_parameter_of_the_wrong_type_is_refused_as_a_config_value_is(name, value):
    default = SegmentNodeParams.defaults()[name]
    with pytest.raises(ConfigError) as from_params:
        SegmentNodeParams.from_dict({name: value})
    with pytest.raises(ConfigError) as from_coerce:
        coerce(value, type(default), name)
    assert str(from_params.value) == str(from_coerce.value) and str(from_params.value).startswith(name)


def test_parameters_convert_as_config_values_do():
    p = SegmentNodeParams.from_dict({"queue_size": 3.0, "segment_period_s": 2, "render_width": 64})
    assert p.assembly.queue_size == 3 and isinstance(p.assembly.queue_size, int)
    assert p.pipeline.segment_period_s == 2.0 and isinstance(p.pipeline.segment_period_s, float)
    assert p.render_width == 64
