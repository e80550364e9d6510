"""The device-state codec: snapshots written before keep restoring, and nothing else loads.

tests/fixtures/device_states_format_<version>.json holds every device's state exactly as
state.json carries it (the first one was written by the code before the one-codec change).
Each entry must decode into a fresh device, restore, save and encode to the identical JSON.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from volt_spec.devices.acpi_pm import AcpiSleep
from volt_spec.devices.i8042 import I8042
from volt_spec.devices.irq import RecordingIrq
from volt_spec.devices.rtc import Rtc
from volt_spec.devices.serial import Serial, SerialState
from volt_spec.devices.state import DeviceState
from volt_spec.devices.virtio import blk as b
from volt_spec.devices.virtio import mmio as m
from volt_spec.devices.virtio import net as n
from volt_spec.devices.virtio.queue import QueueState
from volt_spec.devices.virtio.tap import FakeTap
from volt_spec.devices.virtio.testing import IrqRecorder
from volt_spec.snapshot import codec
from volt_spec.snapshot.format import VERSION

from .fixtures import make_device_states as make

FIXTURES = sorted(Path(make.HERE).glob("device_states_format_*.json"))
LEGACY = {"serial": lambda: Serial(RecordingIrq(), lambda data: None),
          "i8042": lambda: I8042(RecordingIrq(), lambda: None),
          "rtc": lambda: Rtc(lambda: 0.0),
          "acpi_sleep": lambda: AcpiSleep(lambda slp_typ: None)}
STATE_CLASSES = [SerialState, I8042.State, Rtc.State, AcpiSleep.State, QueueState,
                 m.VirtioMmioState, b.BlkState, n.NetState]


def text(data: object) -> str:
    """Order-sensitive JSON text: equal text means the very same state.json content."""
    return json.dumps(data)


def test_a_fixture_exists_for_the_current_format():
    assert Path(make.fixture_path()) in FIXTURES


def test_the_current_code_saves_exactly_the_fixture():
    """The save side: driving the devices as the fixture script does gives the same file."""
    assert make.render(make.device_states()) == Path(make.fixture_path()).read_text()


@pytest.mark.parametrize("fixture", FIXTURES, ids=lambda p: p.name)
@pytest.mark.parametrize("name", sorted(LEGACY))
def test_legacy_device_restores_and_saves_the_same_json(fixture, name):
    saved = json.loads(fixture.read_text())["devices"][name]
    dev = LEGACY[name]()
    dev.restore(codec.decode(dev.State, json.loads(text(saved))))
    assert text(codec.encode(dev.save())) == text(saved)


def _virtio_model(kind, tmp_path, tap):
    if kind == "net":
        return n.VirtioNet(tap, make.MAC)
    image = tmp_path / "disk.img"
    image.write_bytes(bytes(64 * 512))
    return b.VirtioBlk(str(image), disk_id="vol0")


@pytest.mark.parametrize("fixture", FIXTURES, ids=lambda p: p.name)
@pytest.mark.parametrize("kind", ["blk", "net"])
def test_virtio_transport_restores_and_saves_the_same_json(fixture, kind, memory, tmp_path):
    saved = json.loads(fixture.read_text())["virtio"][kind]
    tap = FakeTap()
    model = _virtio_model(kind, tmp_path, tap)
    try:
        irq = IrqRecorder()
        dev = m.VirtioMmio(model, memory, irq)
        dev.restore(codec.decode(dev.State, json.loads(text(saved))))
        assert text(codec.encode(dev.save())) == text(saved)
        assert irq.count == (1 if saved["interrupt_status"] else 0)
    finally:
        tap.close()
        if kind == "blk":
            model.close()


# -- strictness ---------------------------------------------------------------------------

def saved(section: str, name: str) -> dict:
    return json.loads(Path(make.fixture_path()).read_text())[section][name]


def refused(cls: type, data: object) -> str:
    with pytest.raises(ValueError) as e:
        codec.decode(cls, data)
    message = str(e.value)
    assert "\n" not in message
    return message


def test_unknown_and_missing_fields_are_named():
    good = saved("devices", "serial")
    assert refused(SerialState, dict(good, extra=1)) == "SerialState: unknown field(s) extra"
    partial = {k: v for k, v in good.items() if k not in ("rx", "lcr")}
    assert refused(SerialState, partial) == "SerialState: missing field(s) lcr, rx"
    both = dict(partial, zz=0, aa=0)
    assert refused(SerialState, both) == "SerialState: unknown field(s) aa, zz; missing field(s) lcr, rx"


@pytest.mark.parametrize(("field", "value", "message"), [
    ("lcr", True, "SerialState.lcr: True is not an int"),           # bool for int
    ("lcr", "3", "SerialState.lcr: '3' is not an int"),
    ("lcr", 3.0, "SerialState.lcr: 3.0 is not an int"),
    ("thre_pending", 1, "SerialState.thre_pending: 1 is not a bool"),
    ("rx", "AP8bW0E=", "SerialState.rx: 'AP8bW0E=' is not {\"b64\": \"<base64>\"}"),
    ("rx", {"b64": "AP8bW0E=", "hex": ""}, "is not {\"b64\""),
    ("rx", {"b64": 7}, "is not {\"b64\""),
    ("rx", {"b64": "AP8b W0E="}, "SerialState.rx: 'AP8b W0E=' is not base64"),   # junk skipped by a2b
    ("rx", {"b64": "AP8bW0E"}, "SerialState.rx: 'AP8bW0E' is not base64"),      # bad padding
    ("rx", {"b64": "AP8bW0F="}, "is not base64"),                                 # non-canonical
])
def test_wrong_types_and_bad_base64_are_refused(field, value, message):
    assert message in refused(SerialState, dict(saved("devices", "serial"), **{field: value}))


def test_nested_states_are_checked_with_their_path():
    good = saved("virtio", "net")
    queue = dict(good["queues"][1], used_idx=False)
    assert refused(m.VirtioMmioState, dict(good, queues=[good["queues"][0], queue])) == \
        "VirtioMmioState.queues[1].used_idx: False is not an int"
    assert refused(m.VirtioMmioState, dict(good, queues=[dict(good["queues"][0], x=1)])) == \
        "VirtioMmioState.queues[0] (QueueState): unknown field(s) x"
    assert refused(m.VirtioMmioState, dict(good, queues={})) == \
        "VirtioMmioState.queues: {} is not a list"
    assert refused(m.VirtioMmioState, dict(good, queues=[1])) == \
        "VirtioMmioState.queues[0] (QueueState): 1 is not an object"
    device = dict(good["device"], counters=[1, 2, "3"])
    assert refused(m.VirtioMmioState, dict(good, device=device)) == \
        "VirtioMmioState.device.counters[2]: '3' is not an int"


def test_the_device_state_is_the_union_member_that_fits():
    blk, net = saved("virtio", "blk"), saved("virtio", "net")
    assert isinstance(codec.decode(m.VirtioMmioState, blk).device, b.BlkState)
    assert isinstance(codec.decode(m.VirtioMmioState, net).device, n.NetState)
    odd = dict(blk, device=dict(blk["device"], pending=[]))
    assert refused(m.VirtioMmioState, odd) == \
        "VirtioMmioState.device (BlkState): unknown field(s) pending"
    assert refused(m.VirtioMmioState, dict(blk, device=[])) == \
        "VirtioMmioState.device (BlkState): [] is not an object"


def test_not_an_object_at_the_top():
    assert refused(SerialState, [1, 2]) == "SerialState: [1, 2] is not an object"


def test_encode_refuses_a_value_that_would_not_load():
    with pytest.raises(ValueError, match=r"SerialState\.rx: 'abc' is not a bytes"):
        codec.encode(SerialState(rx="abc"))
    with pytest.raises(ValueError, match=r"SerialState\.dropped: True is not an int"):
        codec.encode(SerialState(dropped=True))
    with pytest.raises(ValueError, match="is not a BlkState or a NetState"):
        codec.encode(m.VirtioMmioState(device=QueueState()))


def test_encoding_is_json_ready_and_tuples_travel_as_lists():
    state = m.VirtioMmioState(queues=(QueueState(size=8),), device=n.NetState(pending=("00",)))
    data = codec.encode(state)
    assert json.loads(json.dumps(data)) == data
    assert data["queues"] == [codec.encode(QueueState(size=8))] and data["device"]["pending"] == ["00"]


# -- the state classes ----------------------------------------------------------------------

@pytest.mark.parametrize("cls", STATE_CLASSES, ids=lambda c: c.__name__)
def test_state_classes_declare_every_slot_as_a_field(cls):
    assert issubclass(cls, DeviceState) and set(cls.__slots__) == set(cls.FIELDS)


def test_device_state_basics():
    state = SerialState(lcr=0x1B)
    assert state == SerialState(lcr=0x1B) != SerialState()
    assert state.replace(scr=1) == SerialState(lcr=0x1B, scr=1) and state.scr == 0
    assert repr(SerialState()).startswith("SerialState(divisor=12, ier=0,")
    with pytest.raises(AttributeError):
        state.lcr = 0
    with pytest.raises(ValueError, match="SerialState: unknown field"):
        SerialState(bogus=1)
    with pytest.raises(ValueError, match="device is required"):
        m.VirtioMmioState()
    a, b_ = n.NetState(), n.NetState()
    a.counters[0] = 5                                  # default lists are not shared
    assert b_.counters == [0] * 6


def test_codec_does_not_import_the_devices():
    code = ("import sys, volt_spec.snapshot.codec\n"
            "print(sorted(m for m in sys.modules if m.startswith('volt_spec.devices')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_fixture_version_matches_its_name():
    for path in FIXTURES:
        assert path.name == f"device_states_format_{json.loads(path.read_text())['format_version']}.json"
    assert VERSION in make.fixture_path()
