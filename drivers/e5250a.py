"""Keysight E5250A low-leakage switch mainframe with E5252A 10x12 matrix cards (SCPI).

Used in auto-configuration mode: card number 0, inputs 1..10, outputs 1..12 x cards.
The FREE connection rule is needed (one input drives many lines under the V/3 scheme),
and under it the mainframe would let two inputs share an output (which the manual warns
can damage the instruments), so the guard refuses any close that would do that, whoever
builds the message. The relays the guard counts as closed are the driver's `closed`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from .errors import LimitError, ReplyError
from .guard import Grammar, integer
from .interfaces import SwitchMatrix
from .visa import VisaInstrument

Route = tuple[int, int]  # (input port, output port)
MAX_CHANNELS_PER_MESSAGE = 40  # keeps messages well under the instrument's buffer
INPUTS = 10
OUTPUTS_PER_CARD = 12
MAX_CARDS = 4


def channel_list(routes: Iterable[Route]) -> str:
    return "(@" + ",".join(f"0{i:02d}{o:02d}" for i, o in sorted(routes)) + ")"


# --- the guard's grammar ------------------------------------------------------------------------

@dataclass
class SwitchState:
    closed: set[Route] | None = None      # relays that may be closed; None: unknown
    auto_config: bool = False             # :ROUT:FUNC ACON sent in this session
    rule: str | None = None               # connection rule of the frame set in this session (FREE, SROU)
    sequence: str | None = None           # connection sequence set in this session (BBM, MBBR, NSEQ)


_RULES = {"FREE": "FREE", "SROU": "SROU", "SROUTE": "SROU"}
_SEQUENCES = {"BBM": "BBM", "MBBR": "MBBR", "MBBREAK": "MBBR", "NSEQ": "NSEQ", "NSEQUENCE": "NSEQ"}


# SCPI headers the guard knows, short or long form, the :ROUTe root optional
_HEADERS = {name: re.compile(pattern) for name, pattern in {
    "close": r"(:ROUTE?)?:CLOSE?(:LIST)?",
    "open": r"(:ROUTE?)?:OPEN(:LIST)?",
    "open_card": r"(:ROUTE?)?:OPEN:CARD",
    "close_card": r"(:ROUTE?)?:CLOSE?:CARD",
    "function": r"(:ROUTE?)?:FUNC(TION)?",
    "rule": r"(:ROUTE?)?:CONN(ECTION)?:RULE",
    "sequence": r"(:ROUTE?)?:CONN(ECTION)?:SEQ(UENCE)?",
    "error": r":SYST(EM)?:ERR(OR)?(:NEXT)?",
    "card_type": r":SYST(EM)?:CTYP(E)?",
}.items()}
_QUERIES = frozenset({"close", "open", "function", "rule", "sequence", "error", "card_type", "close_card"})
_COMMON = frozenset({"*IDN?", "*OPC?", "*OPC", "*ESR?", "*CLS", "*WAI"})
_CHANNEL = re.compile(r"^(\d)(\d\d)(\d\d)$")


class SwitchGrammar(Grammar[SwitchState]):
    """The E5250A commands memlab needs. A close is allowed only in auto configuration with
    the relay state known, and only if afterwards no output has two inputs (two bias roles
    on one line, or two sources shorted); opening is always allowed; anything else is refused."""

    def __init__(self, outputs: int = OUTPUTS_PER_CARD * MAX_CARDS):
        self.outputs = outputs

    def unknown_state(self) -> SwitchState:
        return SwitchState()

    def copy(self, s: SwitchState) -> SwitchState:
        return SwitchState(None if s.closed is None else set(s.closed), s.auto_config, s.rule, s.sequence)

    def commands(self, message: str) -> list[str]:
        # no ';' inside a channel list. Headers without the leading ':' are refused in apply,
        # even first in a message (where they would mean the same): nothing needs them.
        return [c for c in message.split(";") if c.strip()]

    def apply(self, s: SwitchState, command: str, where: str) -> None:
        text = command.strip()
        head, _, rest = text.partition(" ")
        head, rest = head.upper(), rest.strip()
        if head == "*RST" and not rest:
            # all relays open; the configuration, rule and sequence this session sets again
            s.closed, s.auto_config, s.rule, s.sequence = set(), False, None, None
            return
        if head in _COMMON:
            if rest:
                raise LimitError(f"{where}{head} takes no parameters")
            return
        query = head.endswith("?")
        body = head.rstrip("?")
        if not body.startswith(":"):
            raise LimitError(f"{where}only absolute headers (':ROUT:...') can be checked")
        names = [n for n, pattern in _HEADERS.items() if pattern.fullmatch(body)]
        if not names or (query and names[0] not in _QUERIES):
            raise LimitError(f"{where}{head} is not covered by the bench limits")
        if query:
            return
        getattr(self, f"_{names[0]}", self._refuse)(s, rest, where)

    # --- commands -------------------------------------------------------------------------

    def _refuse(self, s, rest, where):
        raise LimitError(f"{where}not covered by the bench limits")

    def _routes(self, rest: str, where: str) -> set[Route]:
        m = re.fullmatch(r"\(@([^()]*)\)", rest)
        if not m or not m.group(1).strip():
            raise LimitError(f"{where}not a channel list (@CIIOO,...)")
        routes = set()
        for token in m.group(1).split(","):
            ch = _CHANNEL.match(token.strip())
            if not ch:
                raise LimitError(f"{where}channel {token.strip()!r} is not CIIOO (ranges are not checked)")
            card, inp, out = (int(g) for g in ch.groups())
            if card != 0 or not 1 <= inp <= INPUTS or not 1 <= out <= self.outputs:
                raise LimitError(f"{where}channel {token.strip()} is not an auto-configuration channel "
                                 f"0IIOO with input 1-{INPUTS} and output 1-{self.outputs}")
            routes.add((inp, out))
        return routes

    def _close(self, s, rest, where):
        routes = self._routes(rest, where)
        if s.closed is None or not s.auto_config or None in (s.rule, s.sequence):
            raise LimitError(f"{where}relay state, configuration mode, connection rule or sequence not "
                             f"known in this session (*RST, :ROUT:FUNC ACON, :ROUT:CONN:RULE and :SEQ first)")
        owner: dict[int, int] = {}
        for inp, out in sorted(s.closed | routes):
            if owner.setdefault(out, inp) != inp:
                raise LimitError(f"{where}would connect inputs {owner[out]} and {inp} together on output {out}")
        s.closed |= routes

    def _open(self, s, rest, where):
        routes = self._routes(rest, where)
        if s.closed is not None:
            s.closed -= routes

    def _open_card(self, s, rest, where):
        if rest.upper() in ("ALL", "0"):
            s.closed = set()
        elif not 1 <= integer(rest, where) <= MAX_CARDS:
            raise LimitError(f"{where}card {rest} does not exist")
        # one card's relays opened: counting them as still closed errs on the safe side

    def _function(self, s, rest, where):
        if rest.upper() not in ("ACON", "ACONFIG", "NCON", "NCONFIG"):
            raise LimitError(f"{where}unknown configuration mode {rest!r}")
        s.auto_config = rest.upper().startswith("ACON")
        # a change of mode renumbers the cards, whose rule and sequence may start over
        s.rule = s.sequence = None

    # Under the single-route rule a close displaces the route holding its input or output;
    # with make-before-break (MBBR), or no sequence (NSEQ), the new route is made while the
    # old one may still hold the output: two inputs joined. The close check refuses any close
    # whose routes share an output with a closed one, whatever the rule, so the joins cannot
    # come from a close this guard lets through; the combination is refused all the same,
    # so that safety does not rest on that check alone.

    def _rule(self, s, rest, where):
        frame, rule = self._card_setting(rest, _RULES, where)
        if rule == "SROU" and s.sequence != "BBM":
            raise LimitError(f"{where}single route with sequence {s.sequence or 'unknown'} could make a "
                             f"route before breaking the one holding its output (:ROUT:CONN:SEQ ALL,BBM first)")
        s.rule = rule if frame else None

    def _sequence(self, s, rest, where):
        frame, sequence = self._card_setting(rest, _SEQUENCES, where)
        if sequence != "BBM" and s.rule != "FREE":
            raise LimitError(f"{where}sequence {sequence} under rule {s.rule or 'unknown'} could make a route "
                             f"before breaking the one holding its output (:ROUT:CONN:RULE ALL,FREE first)")
        s.sequence = sequence if frame else None

    def _card_setting(self, rest: str, allowed: dict[str, str], where: str) -> tuple[bool, str]:
        """(whether it sets the whole auto-configuration frame, canonical value). A single card
        number leaves the frame's setting unknown (it names a card only in normal mode)."""
        card, _, value = rest.partition(",")
        card = card.strip().upper()
        if not (card == "ALL" or card.isdigit()) or value.strip().upper() not in allowed:
            raise LimitError(f"{where}cannot check parameters {rest!r}")
        return card in ("ALL", "0"), allowed[value.strip().upper()]

    def doubt(self, before: SwitchState, after: SwitchState) -> SwitchState:
        closed = None if None in (before.closed, after.closed) else before.closed | after.closed
        same = lambda a, b: a if a == b else None  # noqa: E731
        return SwitchState(closed, before.auto_config and after.auto_config,
                           same(before.rule, after.rule), same(before.sequence, after.sequence))


# --- the driver ---------------------------------------------------------------------------------

class E5250A(VisaInstrument, SwitchMatrix):
    read_termination = "\n"
    write_termination = "\n"
    error_query = ":SYST:ERR?"
    max_ports = (INPUTS, OUTPUTS_PER_CARD * MAX_CARDS)   # (inputs, outputs) of a full mainframe

    def __init__(self, resource: str, *, name: str = "E5250A", **visa):
        super().__init__(resource, name=name, grammar=SwitchGrammar(), **visa)
        self.identity = ""

    @property
    def closed(self) -> set[Route]:
        """Relays that are, or may be, closed (as far as this session knows)."""
        return set(self.guard.state.closed or ())

    def initialize(self) -> None:
        """Reset (all relays open), identify, select auto configuration and the FREE rule, and
        take any relay the instrument still reports closed as closed."""
        self.send("*RST")
        self.identity = self.query("*IDN?", retries=1).strip()
        self.send(":ROUT:FUNC ACON", ":ROUT:CONN:RULE ALL,FREE", ":ROUT:CONN:SEQ ALL,BBM")
        self.guard.state.closed |= self.read_closed()

    def event_status(self) -> int:
        """*ESR?: the standard event status register, cleared by reading it."""
        reply = self.query("*ESR?", retries=0).strip()   # not retried: reading clears it
        if not reply.lstrip("+").isdigit():
            raise ReplyError(f"{self.name}: unexpected reply to *ESR?: {reply!r}")
        return int(reply)

    def clear_status(self) -> None:
        """*CLS: empties the error queue and the event status register."""
        self.send("*CLS")

    def connection_settings(self) -> tuple[str, str]:
        """(rule, sequence) of the auto-configuration frame, as the instrument reports them."""
        return (self.query(":ROUT:CONN:RULE? 0", retries=1).strip(),
                self.query(":ROUT:CONN:SEQ? 0", retries=1).strip())

    def card_types(self) -> dict[int, str]:
        types = {}
        for card in range(1, MAX_CARDS + 1):
            reply = self.query(f":SYST:CTYP? {card}", retries=1).strip().strip('"')
            if reply and reply.upper() not in ("NONE", "0"):
                types[card] = reply
        return types

    def size(self) -> tuple[int, int]:
        """(input ports, output ports) of the installed cards."""
        return INPUTS, OUTPUTS_PER_CARD * len(self.card_types())

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
        messages = self._relay_messages(":ROUT:CLOS", set(routes) - self.closed)
        self.guard.check(";".join(messages))   # all or nothing: refused before the first part goes
        for message in messages:
            self.send(message)

    def disconnect(self, routes: Iterable[Route]) -> None:
        for message in self._relay_messages(":ROUT:OPEN", set(routes) & self.closed):
            self.send(message)

    def open_all(self) -> None:
        self.send(":ROUT:OPEN:CARD ALL")

    @staticmethod
    def _relay_messages(command: str, routes: set[Route]) -> list[str]:
        ordered = sorted(routes)
        return [f"{command} {channel_list(ordered[k:k + MAX_CHANNELS_PER_MESSAGE])}"
                for k in range(0, len(ordered), MAX_CHANNELS_PER_MESSAGE)]

    def safe_state(self) -> None:
        def open_everything():
            self.drain()
            self.open_all()

        self.make_safe(open_everything)
