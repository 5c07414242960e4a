"""Keithley 707B switching matrix with 7174A 8x12 matrix cards, over TSP (raw socket, port 5025).

A message is a Lua chunk the instrument runs; it answers only what the chunk prints. The
guard's grammar (`TspGrammar`) reads exactly the statements this driver sends (and the
read-only queries a user may add) and refuses any other Lua: a loop, a function of our own
or a channel pattern could close anything.

Ports: the 707B backplane joins the same row of every slot, so a row is an input port and a
column an output port: input = row A..H -> 1..8, output = (slot - 1) * 12 + column
(the emulator in `simulator/k707b.py` uses the same convention, written there again).
The FREE-style use of a matrix (one row driving many columns) lets two rows share a column,
which would short two sources: the guard refuses any closure that could do that.

Errors: a failing statement aborts the rest of its chunk (a Lua error), so the error queue
is read in a message of its own right after each command message (`send`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from .errors import LimitError, ReplyError
from .guard import Change, Grammar
from .interfaces import SwitchMatrix
from .visa import VisaInstrument

Route = tuple[int, int]       # (input = row 1..8, output = (slot - 1) * 12 + column)
Channel = tuple[int, int, int]  # (slot 1..6, row 1..8, column 1..12)
ROWS = "ABCDEFGH"
COLUMNS = 12
SLOTS = 6
MAX_CHANNELS_PER_STATEMENT = 48   # GUESS: keeps a message near 300 characters, well inside TSP's line buffer

_CHANNEL = re.compile(r"^([1-6])([A-Ha-h])(0[1-9]|1[0-2])$")
_ERROR_MARK = "ERRQ\t"


def channel_name(route: Route) -> str:
    inp, out = route
    if not (1 <= inp <= len(ROWS) and 1 <= out <= COLUMNS * SLOTS):
        raise LimitError(f"route {route}: a 707B has inputs (rows) 1-{len(ROWS)} and outputs "
                         f"(slot columns) 1-{COLUMNS * SLOTS}")
    return f"{(out - 1) // COLUMNS + 1}{ROWS[inp - 1]}{(out - 1) % COLUMNS + 1:02d}"


def _route(ch: Channel) -> Route:
    slot, row, col = ch
    return row, (slot - 1) * COLUMNS + col


# --- the guard's grammar ------------------------------------------------------------------------

@dataclass
class TspState:
    closed: set[Route] | None = None   # relays that may be closed; None: unknown


_S = r"\s*"
_LIST = r"""(?P<q>["'])(?P<list>[A-Za-z0-9:,; ]*)(?P=q)"""


def _statement(*tokens: str) -> re.Pattern:
    return re.compile(_S + _S.join(tokens) + _S)


# statement name -> pattern (Lua is case-sensitive: these spellings only)
_STATEMENTS = {
    "close": _statement(r"channel", r"\.", r"close", r"\(", _LIST, r"\)"),
    "open": _statement(r"channel", r"\.", r"open", r"\(", _LIST, r"\)"),
    "exclusiveclose": _statement(r"channel", r"\.", r"exclusiveclose", r"\(", _LIST, r"\)"),
    "reset": _statement(r"channel", r"\.", r"reset", r"\(", _LIST, r"\)"),
    "getclose": _statement(r"print", r"\(", r"channel", r"\.", r"getclose", r"\(", _LIST, r"\)", r"\)"),
    "error_next": _statement(r"print", r"\(", r"errorqueue", r"\.", r"next", r"\(", r"\)", r"\)"),
    "error_marked": _statement(r"print", r"\(", r'"ERRQ"', r",", r"errorqueue", r"\.", r"next", r"\(", r"\)", r"\)"),
    "error_count": _statement(r"print", r"\(", r"errorqueue", r"\.", r"count", r"\)"),
    "error_clear": _statement(r"errorqueue", r"\.", r"clear", r"\(", r"\)"),
    "slot_idn": _statement(r"print", r"\(", r"slot", r"\[", r"[1-6]", r"\]", r"\.", r"idn", r"\)"),
}
_COMMON = frozenset({"*RST", "*IDN?", "*OPC?", "*CLS"})   # only as a whole message
_READ_ONLY = frozenset({"getclose", "error_next", "error_marked", "error_count", "error_clear", "slot_idn"})


class TspGrammar(Grammar[TspState]):
    """The TSP statements memlab needs. A close is allowed only with the relay state known and
    only if, whichever way the instrument orders the relay moves, no output (column) ever has
    two inputs (rows) on it; opening is always allowed; anything else is refused."""

    def unknown_state(self) -> TspState:
        return TspState()

    def copy(self, s: TspState) -> TspState:
        return TspState(None if s.closed is None else set(s.closed))

    def doubt(self, a: TspState, b: TspState) -> TspState:
        return TspState(None if None in (a.closed, b.closed) else a.closed | b.closed)

    def commands(self, message: str) -> list[str]:
        text = message.strip()
        if text.startswith("*"):
            return [text]   # a common command is a message of its own
        commands, pos = [], 0
        while True:
            while pos < len(text) and (text[pos].isspace() or text[pos] == ";"):
                pos += 1
            if pos >= len(text):
                return commands
            match = next((m for p in _STATEMENTS.values() if (m := p.match(text, pos))), None)
            if match is None:
                return [*commands, text[pos:]]   # the rest is what apply refuses
            commands.append(match.group())
            pos = match.end()

    def apply(self, s: TspState, command: str, where: str) -> None:
        text = command.strip()
        if text.startswith("*"):
            if text.upper() not in _COMMON:
                raise LimitError(f"{where}not a common command the bench limits cover")
            if text.upper() == "*RST":
                s.closed = set()   # every channel open
            return
        kind, match = next(((k, m) for k, p in _STATEMENTS.items() if (m := p.fullmatch(text))), (None, None))
        if kind is None:
            raise LimitError(f"{where}not a TSP statement the bench limits cover (only channel "
                             f"close/open/exclusiveclose/reset, getclose and errorqueue calls)")
        if kind in _READ_ONLY:
            return
        listing = match.group("list")
        if kind == "open":
            certain, _ = self._channels(listing, where, slots=True)
            if s.closed is not None:
                s.closed -= certain
        elif kind == "reset":
            self._channels(listing, where, slots=True)   # attributes only: no relay closes
        elif kind == "close":
            _, possible = self._channels(listing, where, slots=False)
            self._check_joins(s, possible, where)
            s.closed |= possible
        elif kind == "exclusiveclose":
            if not listing.strip():
                s.closed = set()   # "" opens every channel
                return
            _, possible = self._channels(listing, where, slots=False)
            # whether the instrument breaks before it makes is a setting (channel.connectrule)
            # this session does not read: the relays closed before and after may overlap in time
            self._check_joins(s, possible, where)
            s.closed = set(possible)

    @staticmethod
    def _check_joins(s: TspState, routes: set[Route], where: str) -> None:
        if s.closed is None:
            raise LimitError(f"{where}relay state not known in this session (*RST first)")
        owner: dict[int, int] = {}
        for inp, out in sorted(s.closed | routes):
            if owner.setdefault(out, inp) != inp:
                raise LimitError(f"{where}would connect inputs {owner[out]} and {inp} together on output {out}")

    def _channels(self, listing: str, where: str, *, slots: bool) -> tuple[set[Route], set[Route]]:
        """(routes the list certainly names, routes it may name). A range `a:b` is read both in
        channel order and as the rectangle its corners span: the manual's examples (one row,
        a whole card) do not tell the two apart."""
        items = [item.strip() for item in re.split(r"[,;]", listing)]
        if not listing.strip() or any(not item for item in items):
            raise LimitError(f"{where}empty channel list or list item")
        certain: set[Route] = set()
        possible: set[Route] = set()
        for item in items:
            word = item.lower()
            if word == "allslots" or re.fullmatch(r"slot[1-6]", word):
                if not slots:
                    raise LimitError(f"{where}{item!r}: a whole slot cannot be closed")
                wanted = range(1, SLOTS + 1) if word == "allslots" else [int(word[4:])]
                routes = {_route((slot, r, c)) for slot in wanted for r in range(1, 9) for c in range(1, 13)}
                certain |= routes
                possible |= routes
            elif ":" in item:
                first, _, last = item.partition(":")
                a, b = self._channel(first.strip(), where), self._channel(last.strip(), where)
                if a > b:
                    raise LimitError(f"{where}range {item!r} runs backwards")
                in_order = {_route((s, r, c)) for s in range(a[0], b[0] + 1) for r in range(1, 9)
                            for c in range(1, 13) if a <= (s, r, c) <= b}
                rectangle = {_route((s, r, c)) for s in range(a[0], b[0] + 1)
                             for r in range(min(a[1], b[1]), max(a[1], b[1]) + 1)
                             for c in range(min(a[2], b[2]), max(a[2], b[2]) + 1)}
                certain |= in_order & rectangle
                possible |= in_order | rectangle
            else:
                route = _route(self._channel(item, where))
                certain.add(route)
                possible.add(route)
        return certain, possible

    @staticmethod
    def _channel(text: str, where: str) -> Channel:
        m = _CHANNEL.match(text)
        if not m:
            raise LimitError(f"{where}{text!r} is not a channel (slot 1-6, row A-H, column 01-12); "
                             f"channel patterns are not checked")
        return int(m.group(1)), ROWS.index(m.group(2).upper()) + 1, int(m.group(3))


# --- the driver ---------------------------------------------------------------------------------

class K707B(VisaInstrument, SwitchMatrix):
    read_termination = "\n"
    write_termination = "\n"
    # the error queue's next entry (code, message, severity, node, TAB-separated) after a
    # mark no other statement prints: lines a command message printed itself come before it
    error_query = 'print("ERRQ", errorqueue.next())'
    max_ports = (len(ROWS), COLUMNS * SLOTS)   # (inputs, outputs) of a full mainframe

    def __init__(self, resource: str, *, name: str = "K707B", **visa):
        super().__init__(resource, name=name, grammar=TspGrammar(), **visa)
        self.identity = ""

    @property
    def closed(self) -> set[Route]:
        """Relays that are, or may be, closed (as far as this session knows)."""
        return set(self.guard.state.closed or ())

    def initialize(self) -> None:
        """Reset (every channel open), identify, and take any relay the instrument still
        reports closed as closed."""
        self.send("*RST")
        self.identity = self.query("*IDN?", retries=1).strip()
        self.guard.state.closed |= self.read_closed()

    # --- the error queue ------------------------------------------------------------------

    def send(self, *statements: str) -> None:
        """Statements as one message (a common command alone), then the error queue read in a
        message of its own: a clean answer confirms the whole command message to the guard."""
        if len(statements) > 1 and any(s.lstrip().startswith("*") for s in statements):
            raise ValueError(f"{self.name}: a common command is a message of its own: {statements!r}")
        message = " ".join(statements)
        self.write(message)
        change: Change | None = self._last_change
        printed = sum(c.lstrip().startswith("print") for c in self.guard.grammar.commands(message))
        reply = self.query(self.error_query, retries=1)
        for _ in range(printed):   # what the message printed (fewer lines if it stopped at an error)
            if reply.startswith(_ERROR_MARK):
                break
            reply = self.read()
        self._raise_on_error(reply, message)
        if change is not None:
            self.guard.state, self._last_change = change.after, None

    def _parse_error(self, reply: str) -> tuple[int, str]:
        """The mark, then code, message, severity, node, TAB-separated."""
        if not reply.startswith(_ERROR_MARK):
            raise ReplyError(f"{self.name}: unexpected reply {reply.strip()!r} to {self.error_query}")
        fields = reply.strip("\r\n").split("\t")[1:]
        try:
            code = float(fields[0])
        except ValueError:
            raise ReplyError(f"{self.name}: unexpected reply {reply.strip()!r} to {self.error_query}") from None
        if not code.is_integer() or len(fields) < 2:
            raise ReplyError(f"{self.name}: unexpected reply {reply.strip()!r} to {self.error_query}")
        return int(code), fields[1].strip()

    def _clear_error_queue(self, limit: int = 0) -> None:
        self.write("errorqueue.clear()")

    # --- what the instrument reports --------------------------------------------------------

    def read_closed(self) -> set[Route]:
        reply = self.query('print(channel.getclose("allslots"))', retries=1).strip()
        if reply == "nil":
            return set()
        routes = set()
        for token in reply.split(";"):
            m = _CHANNEL.match(token.strip())
            if not m:
                raise ReplyError(f"{self.name}: unexpected reply to channel.getclose: {reply!r}")
            routes.add(_route((int(m.group(1)), ROWS.index(m.group(2).upper()) + 1, int(m.group(3)))))
        return routes

    def card_types(self) -> dict[int, str]:
        """Model of the card in each occupied slot (`slot[N].idn` starts `model,description,...`)."""
        types = {}
        for slot in range(1, SLOTS + 1):
            model = self.query(f"print(slot[{slot}].idn)", retries=1).split(",")[0].strip()
            # GUESS: an empty slot reads as text that is not a model number ("Empty Slot")
            if re.fullmatch(r"\d{4}[A-Z]?(-\d+)?", model):
                types[slot] = model
        return types

    def size(self) -> tuple[int, int]:
        """(input ports, output ports): outputs are numbered by slot, so they run to the
        last occupied slot's 12th column. GUESS: every 707B matrix card is 8 x 12, as the 7174A is."""
        cards = self.card_types()
        return len(ROWS), COLUMNS * max(cards, default=0)

    # --- relays ---------------------------------------------------------------------------

    def connect(self, routes: Iterable[Route]) -> None:
        messages = self._relay_messages("close", set(routes) - self.closed)
        self.guard.check(" ".join(messages))   # all or nothing: refused before the first part goes
        for message in messages:
            self.send(message)

    def disconnect(self, routes: Iterable[Route]) -> None:
        for message in self._relay_messages("open", set(routes) & self.closed):
            self.send(message)

    def open_all(self) -> None:
        self.send('channel.open("allslots")')

    @staticmethod
    def _relay_messages(function: str, routes: set[Route]) -> list[str]:
        names = [channel_name(r) for r in sorted(routes, key=lambda r: (r[1], r[0]))]
        return [f'channel.{function}("{",".join(names[k:k + MAX_CHANNELS_PER_STATEMENT])}")'
                for k in range(0, len(names), MAX_CHANNELS_PER_STATEMENT)]

    def safe_state(self) -> None:
        def open_everything():
            self.drain()
            self.open_all()

        self.make_safe(open_everything)
