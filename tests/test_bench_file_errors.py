"""Bad bench files and instruments that do not answer: one clear error naming the field or
the resource, and no source left energized.

Bench files go through `memlab.config.load_bench` and through the CLI (`memlab bench check
FILE`: one `memlab: error: ...` line on stderr, exit code 1, no traceback). Instruments are
the emulated ones on loopback sockets, reached through pyvisa-py.
"""

from __future__ import annotations

import signal
import socket
import time
from pathlib import Path

import pytest
import yaml

from drivers.b1500a import B1500A
from drivers.e5250a import E5250A
from drivers.errors import DriverError, InstrumentNotAnswering
from helpers import memlab_cli, received
from memlab.bench import open_crossbar
from memlab.cli import main
from memlab.config import SHIPPED_BENCHES, BenchFileError, load_bench
from memlab.store import RunStore

SHIPPED = (SHIPPED_BENCHES / "sim-b1500-e5250.yaml").read_text()


# --- the cases -------------------------------------------------------------------------------

def _set(path: str, value):
    """A mutation of the bench mapping: set the value at a dotted path ('wiring.columns.0')."""
    def mutate(data: dict) -> None:
        *parents, last = path.split(".")
        node = data
        for key in parents:
            node = node[int(key) if isinstance(node, list) else key]
        node[int(last) if isinstance(node, list) else last] = value
    return mutate


def _delete(path: str):
    def mutate(data: dict) -> None:
        *parents, last = path.split(".")
        node = data
        for key in parents:
            node = node[key]
        del node[last]
    return mutate


# (id, YAML text or a mutation of the shipped bench, what the one-line error must contain)
CASES = [
    ("malformed-flow-mapping",
     "name: broken\n"
     "instruments:\n"
     "  analyzer: {type: keysight_b1500a, resource: 'TCPIP::127.0.0.1::5025::SOCKET'\n"
     "  switch: {type: keysight_e5250a}\n",
     ["not valid YAML", "line 4", "column"]),
    ("malformed-indentation",
     "name: broken\n"
     "crossbar:\n"
     "  source: analyzer\n"
     " switch: switch\n",
     ["not valid YAML", "line 4"]),
    ("malformed-tab", SHIPPED.replace("  switch:\n", "\tswitch:\n"),
     ["not valid YAML", f"line {SHIPPED.splitlines().index('  switch:') + 1}"]),
    ("driver-option-of-the-wrong-type",
     (SHIPPED_BENCHES / "sim-4200-707b.yaml").read_text().replace("kult: true", "kult: maybe"),
     ["instruments.analyzer", "options.kult: a keithley_4200a takes bool, got 'maybe'"]),
    ("not-a-mapping-list", "- analyzer\n- switch\n", ["a bench file is a YAML mapping"]),
    ("not-a-mapping-scalar", "just some words\n", ["a bench file is a YAML mapping"]),
    ("not-a-mapping-empty", "", ["a bench file is a YAML mapping"]),
    ("unknown-instrument-type", _set("instruments.analyzer.type", "keysight_b2900a"),
     ["instruments.analyzer.type", "unknown instrument type 'keysight_b2900a'",
      "keysight_b1500a", "keysight_e5250a"]),
    ("two-lines-one-port", _set("wiring.columns.0", 4),
     ["wiring", "columns[0]", "switch port 4", "rows[3]"]),
    ("two-rows-one-port", _set("wiring.rows.5", 2), ["wiring", "rows[5]", "switch port 2", "rows[1]"]),
    ("port-zero", _set("wiring.rows.2", 0), ["wiring.rows.2", "greater than or equal to 1"]),
    ("role-channel-twice", _set("wiring.sense.channel", 1),
     ["wiring", "sense.channel: 1 is already used by drive"]),
    ("role-input-twice", _set("wiring.col_two_thirds.switch_input", 3),
     ["wiring", "col_two_thirds.switch_input: 3 is already used by row_third"]),
    ("source-missing", _set("crossbar.source", "smu"),
     ["crossbar.source", "no instrument named 'smu'", "analyzer, switch"]),
    ("source-is-a-switch", _set("crossbar.source", "switch"),
     ["crossbar.source", "'switch' is a keysight_e5250a, not a source"]),
    ("switch-is-a-source", _set("crossbar.switch", "analyzer"),
     ["crossbar.switch", "'analyzer' is a keysight_b1500a, not a switch"]),
    ("line-voltage-out-of-range", _set("limits.max_line_voltage", 500),
     ["limits.max_line_voltage", "less than or equal to 100"]),
    ("compliance-out-of-range", _set("limits.compliance_current", 0.5),
     ["limits.compliance_current", "less than or equal to 0.1"]),
    ("pulse-width-not-positive", _set("limits.max_pulse_width", 0),
     ["limits.max_pulse_width", "greater than 0"]),
    ("read-voltage-above-the-limit", _set("crossbar.read_voltage", 3.0),
     ["crossbar.read_voltage", "exceeds max_device_voltage 2.5 V"]),
    ("misspelt-limit", _set("limits.max_voltage", 2.0), ["limits.max_voltage", "Extra inputs"]),
    ("missing-wiring", _delete("wiring"), ["wiring: Field required"]),
    ("timeout-not-a-number", _set("instruments.switch.timeout_s", "fast"),
     ["instruments.switch.timeout_s", "valid number"]),
    ("port-beyond-the-switch", _set("wiring.rows.0", 60),
     ["wiring.rows[0]: switch output port 60", "keysight_e5250a has at most 48"]),
    ("input-beyond-the-switch", _set("wiring.sense.switch_input", 12),
     ["wiring.sense.switch_input: input port 12", "keysight_e5250a has 10"]),
    ("window-upside-down", _set("crossbar.conductance_window", [1e-3, 1e-5]),
     ["crossbar.conductance_window", "0 < low < high"]),
]


def write_case(directory: Path, case_id: str, spec, base_yaml: str = SHIPPED) -> Path:
    if isinstance(spec, str):
        text = spec
    else:
        data = yaml.safe_load(base_yaml)
        spec(data)
        text = yaml.safe_dump(data, sort_keys=False)
    path = directory / f"{case_id}.yaml"
    path.write_text(text)
    return path


@pytest.fixture
def sigterm_restored():
    """memlab.cli.main installs its SIGTERM handler; put pytest's back afterwards."""
    saved = signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGTERM, saved)


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_error_line(err: str, *fragments: str) -> str:
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("memlab: error: "), err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


# --- bench files ---------------------------------------------------------------------------------

def test_the_shipped_bench_itself_loads(tmp_path):
    """The cases below break one thing each in this file."""
    config = load_bench(write_case(tmp_path, "shipped", SHIPPED))
    assert config.wiring.rows[3] == 4 and config.wiring.drive.channel == 1


@pytest.mark.parametrize("case_id, spec, fragments", CASES, ids=[c[0] for c in CASES])
def test_load_bench_names_the_file_and_the_field(tmp_path, case_id, spec, fragments):
    path = write_case(tmp_path, case_id, spec)
    with pytest.raises(BenchFileError) as info:
        load_bench(path)
    message = str(info.value)
    assert message.startswith(f"{path}: "), message
    assert "\n" not in message and "<unicode string>" not in message, message
    for fragment in fragments:
        assert fragment in message, (fragment, message)


@pytest.mark.parametrize("case_id, spec, fragments", CASES, ids=[c[0] for c in CASES])
def test_bench_check_prints_one_error_line_and_touches_no_instrument(
        emulation, tmp_path, capsys, sigterm_restored, case_id, spec, fragments):
    """The bench file points at live emulated instruments: nothing is sent to them."""
    bench, live = emulation
    path = write_case(tmp_path, case_id, spec, base_yaml=live.to_yaml())
    code, out, err = run_cli(capsys, "bench", "check", str(path))
    assert code == 1
    assert out == ""
    assert_one_error_line(err, str(path), *fragments)
    assert received(bench, "analyzer") == [] and received(bench, "switch") == []


def test_unreadable_bench_files(tmp_path, capsys, sigterm_restored):
    binary = tmp_path / "bench.yaml"
    binary.write_bytes(b"\xff\xfe\x00\x81 not text")
    missing = tmp_path / "nowhere.yaml"
    for path, fragment in [(binary, "not a text file"), (missing, "cannot read the file")]:
        with pytest.raises(BenchFileError, match=fragment):
            load_bench(path)
        code, out, err = run_cli(capsys, "bench", "check", str(path))
        assert code == 1
        assert_one_error_line(err, str(path), fragment)


def test_an_emulation_option_the_emulator_cannot_take_is_named(tmp_path, capsys, sigterm_restored):
    path = write_case(tmp_path, "cards", SHIPPED.replace("cards: 2", "cards: two"))
    code, out, err = run_cli(capsys, "demo", "--bench", str(path), "--store", str(tmp_path / "store"))
    assert code == 1
    assert_one_error_line(err, "instruments.switch.options", "'two'")
    assert not (tmp_path / "store").exists() or RunStore(tmp_path / "store").runs() == []


# --- instruments that do not answer -------------------------------------------------------------

def leave_energized(bench, live) -> None:
    """What a previous session killed in the middle of its work would leave behind: sources on
    and biased, relays closed."""
    src = B1500A(live.instruments["analyzer"].resource, limits=live.limits, name="analyzer")
    src.initialize()
    src.enable([1, 3])
    src.set_voltages({1: 0.5, 3: -0.3})
    src.close()
    sw = E5250A(live.instruments["switch"].resource, name="switch")
    sw.initialize()
    sw.connect({(1, 1), (3, 9)})
    sw.close()
    assert bench.source_outputs()[("analyzer", 1)] == (0.5, 0.01)
    assert bench.closed_relays() == {(1, 1), (3, 9)}


def sources_off(bench) -> bool:
    cmds = received(bench, "analyzer")
    last_cl = max(i for i, c in enumerate(cmds) if c == "CL")
    return (all(v is None for v in bench.source_outputs().values())
            and not any(c.startswith(("CN", "DV", "PV", "XE")) for c in cmds[last_cl:]))


def free_port() -> int:
    """A loopback port with nothing listening on it."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bench_file(tmp_path, live, *, timeout_s: float, resources: dict[str, str] | None = None) -> Path:
    """The live bench written as a bench file, with its `timeout_s` and some resources changed."""
    data = yaml.safe_load(live.with_resources(resources or {}).to_yaml())
    for inst in data["instruments"].values():
        inst["timeout_s"] = timeout_s
    path = tmp_path / "bench.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.mark.parametrize("dead", ["analyzer", "switch"])
def test_nothing_listening_names_the_instrument_and_its_resource(
        emulation, tmp_path, capsys, sigterm_restored, dead):
    bench, live = emulation
    leave_energized(bench, live)
    resource = f"TCPIP::127.0.0.1::{free_port()}::SOCKET"
    path = bench_file(tmp_path, live, timeout_s=1.0, resources={dead: resource})
    with pytest.raises(InstrumentNotAnswering) as info:
        with open_crossbar(load_bench(path)):
            pass
    assert f"{dead} at {resource}" in str(info.value) and "refused" in str(info.value)
    # the instrument that does answer is left safe: sources off, or the crossbar cut off
    if dead == "switch":
        assert sources_off(bench)
    else:
        assert bench.closed_relays() == frozenset()
        relay_cmds = [c for c in received(bench, "switch") if c.startswith((":ROUT:CLOS ", ":ROUT:OPEN"))]
        assert relay_cmds[-1] == ":ROUT:OPEN:CARD ALL"
    code, out, err = run_cli(capsys, "bench", "check", str(path))
    assert code == 1
    assert_one_error_line(err, f"{dead} at {resource}", "refused")


@pytest.mark.parametrize("silent", ["analyzer", "switch"])
def test_silent_instrument_names_itself_and_its_resource_within_the_bench_timeout(
        emulation, tmp_path, capsys, sigterm_restored, silent):
    """The instrument accepts the connection but never replies (hung). The wait is the bench
    file's `timeout_s` (0.3 s here; the shipped bench says 5 s), not minutes."""
    bench, live = emulation
    leave_energized(bench, live)
    bench.servers[silent].faults.mute = True
    path = bench_file(tmp_path, live, timeout_s=0.3)
    config = load_bench(path)
    resource = config.instruments[silent].resource
    with pytest.raises(DriverError) as info:
        with open_crossbar(config):
            pass
    assert f"{silent} at {resource}: no reply within 0.3 s" in str(info.value)   # the file's timeout
    assert bench.servers[silent].received()[0].startswith("*RST")  # it was asked, and kept silent
    if silent == "switch":
        assert sources_off(bench)
        assert bench.source_outputs()[("analyzer", 1)] is None
    else:
        assert bench.closed_relays() == frozenset()
    code, out, err = run_cli(capsys, "bench", "check", str(path))
    assert code == 1
    assert_one_error_line(err, f"{silent} at {resource}: no reply within 0.3 s")


def test_the_memlab_process_reports_errors_in_one_line(emulation, tmp_path):
    """The installed command as a child process (several at once): exit code 1, one line on
    stderr, no traceback; and the emulated instruments received nothing from bad files."""
    bench, live = emulation
    base = live.to_yaml()
    picked = {"malformed-flow-mapping", "two-lines-one-port"}
    runs = []
    for case_id, spec, fragments in CASES:
        if case_id in picked:
            path = write_case(tmp_path, case_id, spec, base_yaml=base)
            runs.append((memlab_cli("bench", "check", str(path)), [str(path), *fragments]))
    resource = f"TCPIP::127.0.0.1::{free_port()}::SOCKET"
    dead = bench_file(tmp_path, live, timeout_s=1.0, resources={"switch": resource})
    runs.append((memlab_cli("tune", str(dead), "--uniform", "200", "--store", str(tmp_path / "runs")),
                 [f"switch at {resource}", "refused"]))
    for proc, fragments in runs:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 1, err
        assert_one_error_line(err, *fragments)
    assert received(bench, "switch") == []
    assert sources_off(bench)  # the tune run reached the analyzer, and left it off
