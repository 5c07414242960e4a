"""Keysight E5250A low-leakage switch mainframe with E5252A 10x12 matrix cards (SCPI).

Used in auto-configuration mode: card number 0, inputs 1..10, outputs 1..12 x cards.
The FREE connection rule is needed (one input drives many lines under the V/3 scheme),
and under it the mainframe would let two inputs share an output (which the manual warns
can damage the instruments), so this driver refuses any close that would do that.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from .errors import LimitError, ReplyError
from .interfaces import SwitchMatrix
from .visa import VisaInstrument

Route = tuple[int, int]  # (input port, output port)
MAX_CHANNELS_PER_MESSAGE = 40  # keeps messages well under the instrument's buffer


def channel_list(routes: Iterable[Route]) -> str:
    return "(@" + ",".join(f"0{i:02d}{o:02d}" for i, o in sorted(routes)) + ")"


class E5250A(VisaInstrument, SwitchMatrix):
    read_termination = "\n"
    write_termination = "\n"
    error_query = ":SYST:ERR?"

    def __init__(self, resource: str, *, name: str = "E5250A", **visa):
        super().__init__(resource, name=name, **visa)
        self.identity = ""
        self.closed: set[Route] = set()

    def initialize(self) -> None:
        """Identify, select auto configuration and the FREE rule, and learn the relay state."""
        self.identity = self.query("*IDN?", retries=1).strip()
        self.send(":ROUT:FUNC ACON", ":ROUT:CONN:RULE ALL,FREE", ":ROUT:CONN:SEQ ALL,BBM")
        self.closed = self.read_closed()

    def card_types(self) -> dict[int, str]:
        types = {}
        for card in range(1, 5):
            reply = self.query(f":SYST:CTYP? {card}", retries=1).strip().strip('"')
            if reply and reply.upper() not in ("NONE", "0"):
                types[card] = reply
        return types

    def output_ports(self) -> int:
        return 12 * len(self.card_types())

    def read_closed(self) -> set[Route]:
        reply = self.query(":ROUT:CLOS:CARD? 0", retries=1)
        routes = set()
        for chan in re.findall(r"\d{5}", reply):
            routes.add((int(chan[1:3]), int(chan[3:5])))
        if "@" not in reply:
            raise ReplyError(f"{self.name}: unexpected reply to :ROUT:CLOS:CARD? {reply!r}")
        return routes

    # --- relays ---------------------------------------------------------------------------

    def connect(self, routes: Iterable[Route]) -> None:
        routes = set(routes) - self.closed
        if not routes:
            return
        after = self.closed | routes
        owner: dict[int, int] = {}
        for inp, out in sorted(after):
            if owner.setdefault(out, inp) != inp:
                raise LimitError(f"{self.name}: closing {channel_list(routes)} would connect inputs "
                                 f"{owner[out]} and {inp} together on output {out}")
        self.closed |= routes  # before sending: if the close fails it may still have happened
        self._relays(":ROUT:CLOS", routes)

    def disconnect(self, routes: Iterable[Route]) -> None:
        routes = set(routes) & self.closed
        if routes:
            self._relays(":ROUT:OPEN", routes)
            self.closed -= routes

    def open_all(self) -> None:
        self.send(":ROUT:OPEN:CARD ALL")
        self.closed.clear()

    def _relays(self, command: str, routes: set[Route]) -> None:
        ordered = sorted(routes)
        for k in range(0, len(ordered), MAX_CHANNELS_PER_MESSAGE):
            self.send(f"{command} {channel_list(ordered[k:k + MAX_CHANNELS_PER_MESSAGE])}")

    def safe_state(self) -> None:
        def open_everything():
            self.drain()
            self.open_all()

        self.make_safe(open_everything)
