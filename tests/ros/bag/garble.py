"""Copy a bag with some message payloads garbled (their CDR header broken), for the bag tools' tests."""
from pathlib import Path
from typing import Callable, Dict, Set, Tuple

from gcross_ros.bag.reader import BagReader
from gcross_ros.msgs import rosbags_msgs as rb


def garble_bag(src, dst, pick: Callable[[str, int], bool]) -> Dict[str, Set[int]]:
    """Copy ``src`` to ``dst``; the ``k``-th message of a topic (counted from 0) is garbled when
    ``pick(topic, k)``. Returns topic -> log times (ns) of the garbled messages."""
    from rosbags.rosbag2 import Writer

    garbled: Dict[str, Set[int]] = {}
    counts: Dict[str, int] = {}
    with BagReader(src) as bag:
        writer = Writer(Path(dst), version=Writer.VERSION_LATEST)
        writer.open()
        conns = {}
        for c in bag._reader.connections:
            conns[c.topic] = writer.add_connection(c.topic, c.msgtype, typestore=rb.typestore(),
                                                   offered_qos_profiles=list(bag.qos(c.topic)))
        for key, value in bag.custom_data.items():
            writer.set_custom_data(key, value)
        for topic, _, t_ns, raw in bag.messages():
            k = counts[topic] = counts.get(topic, -1) + 1
            if pick(topic, k):
                raw = b"\x07\x07\x07\x07" + raw[4:]  # no valid CDR encapsulation
                garbled.setdefault(topic, set()).add(t_ns)
            writer.write(conns[topic], t_ns, raw)
        writer.close()
    return garbled
