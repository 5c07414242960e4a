"""Instrument side of a Keithley 707B switching matrix with 7174A matrix cards, over TSP,
as a text core: one received message in, the lines it prints out.

Written from the Models 707B/708B Reference Manual (channel specifiers, channel lists,
`channel.close/open/exclusiveclose/getclose`, `errorqueue.*`) and the TSP conventions the
Keithley 2600/3700 manuals share (Lua `print` separates values with a TAB, numbers print
in `%.5e`, nothing is sent back unless something is printed). Where no source settled a
behaviour the choice is marked GUESS.

A message is a Lua chunk. This core implements the subset a switch client uses: call
statements (`f(args)`, `f"str"`) separated by blanks or `;`, whose arguments are strings,
numbers, `nil`, `true`/`false`, names, fields (`errorqueue.count`, `slot[2].idn`) and
calls. Other Lua (loops, assignments, function definitions) is reported as a TSP syntax
error, which a real 707B would run instead: clients of this emulator must not rely on it.
A whole message starting with `*` is an IEEE 488.2 common command.

Channels: slot digit 1-6, row letter A-H, two-digit column 01-12 (`1A01`); lists are
comma-separated (the 3700A manual also allows `;`), ranges `1A01:1H12` run in channel
order (slot, row, column), `slotN` and `allslots` name whole cards. The backplane joins
the same row of every slot, so towards `on_change` a relay is (input, output) with
input = row A..H -> 1..8 and output = (slot - 1) * 12 + column.
"""

from __future__ import annotations

import re
from typing import Callable

SLOTS = 6
ROWS = "ABCDEFGH"
COLUMNS = 12
CARD_MODEL = "7174A"
DEFAULT_IDN = "Keithley Instruments Inc., Model 707B, 04087523, 1.2.0"  # GUESS: serial and firmware
CARD_IDN = "7174A,8x12 High Speed Low Leakage Current Matrix,01.00a"    # GUESS: text after the model
EMPTY_SLOT_IDN = "Empty Slot"  # GUESS: what slot[N].idn reads for an empty slot
NODE = 1                       # TSP-Link node number of a stand-alone instrument
ERROR_QUEUE_LENGTH = 100       # GUESS: older entries are kept, newer ones dropped when full

SEVERITY_NONE, SEVERITY_INPUT = 0, 20   # "possible invalid user input" (manual, errorqueue.next)
# TSP syntax and runtime errors are the codes the 2600/3700 family reports.
SYNTAX_ERROR, RUNTIME_ERROR = -285, -286
# GUESS: the codes for channel lists that name nothing valid; the 707B manual's error list
# could not be consulted, so these follow the SCPI meanings.
ILLEGAL_PARAMETER, OUT_OF_RANGE = -224, -222
# GUESS: the code and severity a relay the card could not drive reports (the SCPI meaning,
# severity "serious"), as `inject_error` emulates it
HARDWARE_ERROR, SEVERITY_SERIOUS = -240, 30
_MESSAGES = {ILLEGAL_PARAMETER: "Illegal parameter value", OUT_OF_RANGE: "Parameter data out of range",
             HARDWARE_ERROR: "Hardware error"}

_CHANNEL = re.compile(r"^([1-9])([A-Ha-h])(\d\d)$")  # GUESS: row letters in either case
_TOKEN = re.compile(r"""\s*(?:(?P<name>[A-Za-z_]\w*)|(?P<number>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)
                    |(?P<string>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')|(?P<op>[()\[\].,;=:]))""", re.X)
_KEYWORDS = {"and", "break", "do", "else", "elseif", "end", "for", "function", "if", "in", "local",
             "not", "or", "repeat", "return", "then", "until", "while"}

Channel = tuple[int, int, int]  # (slot, row 1..8, column 1..12)


class TspError(Exception):
    def __init__(self, code: int, message: str, severity: int = SEVERITY_INPUT):
        super().__init__(code, message)
        self.code, self.message, self.severity = code, message, severity


def _syntax(near: str) -> TspError:
    return TspError(SYNTAX_ERROR, f"TSP Syntax error at line 1: unexpected symbol near '{near}'")


def _runtime(text: str) -> TspError:
    return TspError(RUNTIME_ERROR, f"TSP Runtime error at line 1: {text}")


def channel_name(ch: Channel) -> str:
    slot, row, col = ch
    return f"{slot}{ROWS[row - 1]}{col:02d}"


# --- parsing a chunk ---------------------------------------------------------------------------

def _tokens(text: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise _syntax(text[pos:].strip()[:10])
        kind = m.lastgroup
        value = m.group(kind)
        if text.startswith("--", m.start(kind)) or value == "..":
            raise _syntax(value)
        out.append((kind, value))
        pos = m.end()
    return out


class _Parser:
    """call statements only: stat := prefix args; prefix := Name { '.' Name | '[' exp ']' | args }"""

    def __init__(self, tokens):
        self.tokens, self.k = tokens, 0

    def peek(self, value=None):
        if self.k >= len(self.tokens):
            return None
        tok = self.tokens[self.k]
        return tok if value is None or tok[1] == value else None

    def take(self, value):
        if not self.peek(value):
            raise _syntax(self.tokens[self.k][1] if self.k < len(self.tokens) else "<eof>")
        self.k += 1

    def chunk(self) -> list:
        stats = []
        while self.peek() is not None:
            if self.peek(";"):
                self.k += 1
                continue
            stat = self.prefix()
            if stat[0] != "call":
                raise _syntax(self.tokens[self.k][1] if self.k < len(self.tokens) else "<eof>")
            stats.append(stat)
        return stats

    def prefix(self):
        tok = self.peek()
        if tok is None or tok[0] != "name" or tok[1] in _KEYWORDS:
            raise _syntax(tok[1] if tok else "<eof>")
        self.k += 1
        node = ("global", tok[1])
        while True:
            if self.peek("."):
                self.k += 1
                name = self.peek()
                if name is None or name[0] != "name":
                    raise _syntax(name[1] if name else "<eof>")
                self.k += 1
                node = ("field", node, ("const", name[1]))
            elif self.peek("["):
                self.k += 1
                key = self.expression()
                self.take("]")
                node = ("field", node, key)
            elif self.peek("("):
                self.k += 1
                args = []
                if not self.peek(")"):
                    args.append(self.expression())
                    while self.peek(","):
                        self.k += 1
                        args.append(self.expression())
                self.take(")")
                node = ("call", node, args)
            elif self.peek() and self.peek()[0] == "string":
                node = ("call", node, [self.expression()])
            else:
                return node

    def expression(self):
        tok = self.peek()
        if tok is None:
            raise _syntax("<eof>")
        kind, value = tok
        if kind == "string":
            self.k += 1
            return ("const", _unquote(value))
        if kind == "number":
            self.k += 1
            return ("const", float(value))
        if kind == "name" and value in ("nil", "true", "false"):
            self.k += 1
            return ("const", {"nil": None, "true": True, "false": False}[value])
        return self.prefix()


def _unquote(literal: str) -> str:
    body = literal[1:-1]
    return re.sub(r"\\(.)", lambda m: {"n": "\n", "t": "\t"}.get(m.group(1), m.group(1)), body)


def _describe(node) -> str:
    """How Lua names the thing an error is about: field 'x' or global 'x'."""
    if node[0] == "global":
        return f"global '{node[1]}'"
    if node[0] == "field" and node[2][0] == "const":
        return f"field '{node[2][1]}'"
    return "a value"


def _lua_text(value) -> str:
    if value is None:
        return "nil"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return f"{value:.5e}"   # format.asciiprecision's default: 6 significant digits
    if isinstance(value, str):
        return value
    return f"table: 0x{id(value) & 0xffffff:06x}"


# --- the instrument ------------------------------------------------------------------------------

class K707BCore:
    name = "707B"
    read_termination = "\n"
    write_termination = "\n"
    message_ends = "\r\n"   # CR or LF ends a message

    def __init__(self, cards: int = 2, on_change: Callable[[frozenset], None] | None = None,
                 idn: str | None = None):
        if not 1 <= cards <= SLOTS:
            raise ValueError(f"cards must be 1..{SLOTS}, got {cards}")
        self.cards = cards
        self.on_change = on_change
        self.idn = idn or DEFAULT_IDN
        self._closed: frozenset[Channel] = frozenset()
        self._errors: list[tuple[int, str, int]] = []
        self._printed: list[str] = []
        self._failures = 0   # inject_error: calls still to fail
        self._globals = self._environment()

    @classmethod
    def emulate(cls, on_change: Callable[[frozenset], None], options: dict, timing) -> "K707BCore":
        """The core a bench file's instrument entry describes (options: cards, slots 1..cards)."""
        return cls(cards=int(options.get("cards", 2)), on_change=on_change)

    # --- public state --------------------------------------------------------------------------

    @property
    def closed_channels(self) -> frozenset[Channel]:
        return self._closed

    @property
    def closed(self) -> frozenset[tuple[int, int]]:
        """Closed relays as (input = row 1..8, output = (slot - 1) * 12 + column)."""
        return frozenset(_route(ch) for ch in self._closed)

    def inject_error(self, count: int = 1) -> None:
        """The next `count` calls that change something (channel.close, open,
        exclusiveclose, reset, reset(), *RST) fail with error -240 "Hardware error" (GUESS):
        nothing of that call is done and, as with any Lua error, the rest of its chunk is not
        run; errorqueue.next() then reports it."""
        self._failures += int(count)

    def _may_fail(self) -> None:
        if self._failures:
            self._failures -= 1
            raise TspError(HARDWARE_ERROR, _MESSAGES[HARDWARE_ERROR], SEVERITY_SERIOUS)

    def reset(self) -> None:
        """*RST / reset(): every channel open. GUESS: the error queue is left alone."""
        self._set_closed(frozenset())

    def handle(self, message: str) -> list[str]:
        self._printed = []
        text = message.strip()
        if text.startswith("*"):
            self._common(text)
            return self._printed
        try:
            statements = _Parser(_tokens(text)).chunk()
        except TspError as err:
            self._push(err)   # a syntax error: nothing of the chunk runs
            return []
        try:
            for statement in statements:
                self._evaluate(statement)
        except TspError as err:   # GUESS: any error aborts the rest of the chunk, as a Lua error does
            self._push(err)
        return self._printed

    # --- common commands -----------------------------------------------------------------------

    def _common(self, text: str) -> None:
        command = text.upper()
        if command == "*IDN?":
            self._printed.append(self.idn)
        elif command == "*OPC?":
            self._printed.append("1")
        elif command == "*RST":
            try:
                self._may_fail()
            except TspError as err:
                self._push(err)
                return
            self.reset()
        elif command == "*CLS":
            self._errors.clear()   # GUESS: clears the error queue with the status registers
        elif command in ("*OPC", "*WAI"):
            pass
        else:
            self._push(_syntax(text[:10]))

    # --- evaluation ----------------------------------------------------------------------------

    def _evaluate(self, node):
        kind = node[0]
        if kind == "const":
            return node[1]
        if kind == "global":
            return self._globals.get(node[1])
        if kind == "field":
            table = self._evaluate(node[1])
            key = self._evaluate(node[2])
            if not isinstance(table, (dict, _Dynamic)):
                raise _runtime(f"attempt to index {_describe(node[1])} (a nil value)")
            if isinstance(key, float) and key.is_integer():
                key = int(key)
            return table.get(key)
        if kind == "call":
            function = self._evaluate(node[1])
            if not callable(function):
                raise _runtime(f"attempt to call {_describe(node[1])} (a nil value)")
            values = []
            for arg in node[2]:
                value = self._evaluate(arg)
                values.append(value)
            return function(*values)
        raise _syntax(str(node))

    def _environment(self) -> dict:
        def changing(action):
            def call(*a):
                self._may_fail()
                return action(*a)
            return call

        channel = {
            "close": changing(lambda *a: self._close(_string_arg("close", a))),
            "open": changing(lambda *a: self._open(_string_arg("open", a))),
            "exclusiveclose": changing(lambda *a: self._exclusive_close(_string_arg("exclusiveclose", a))),
            "reset": changing(lambda *a: self._reset_channels(_string_arg("reset", a))),
            "getclose": lambda *a: self._getclose(_string_arg("getclose", a)),
        }
        errorqueue = _Dynamic({
            "next": lambda: lambda *a: self._next_error(),
            "clear": lambda: lambda *a: self._errors.clear(),
            "count": lambda: float(len(self._errors)),
        })
        slots = {n: _Dynamic({"idn": (lambda n=n: CARD_IDN if n <= self.cards else EMPTY_SLOT_IDN)})
                 for n in range(1, SLOTS + 1)}
        return {
            "print": self._print,
            "channel": channel,
            "errorqueue": errorqueue,
            "slot": slots,
            "localnode": {"model": "707B"},
            "reset": changing(lambda *a: self.reset()),
        }

    def _print(self, *values) -> None:
        flat: list = []
        for v in values:
            flat.extend(v if isinstance(v, _Multiple) else [v])
        self._printed.append("\t".join(_lua_text(v) for v in flat))

    def _push(self, err: TspError) -> None:
        if len(self._errors) < ERROR_QUEUE_LENGTH:
            self._errors.append((err.code, err.message, err.severity))

    def _next_error(self) -> "_Multiple":
        if not self._errors:
            # GUESS: severity and node of the empty-queue answer
            return _Multiple([0.0, "Queue Is Empty", float(SEVERITY_NONE), 0.0])
        code, message, severity = self._errors.pop(0)
        return _Multiple([float(code), message, float(severity), float(NODE)])

    # --- channel lists ---------------------------------------------------------------------------

    def _installed(self, slot: int) -> bool:
        return 1 <= slot <= self.cards

    def _slot_channels(self, slot: int) -> list[Channel]:
        return [(slot, r, c) for r in range(1, len(ROWS) + 1) for c in range(1, COLUMNS + 1)]

    def _channel(self, text: str) -> Channel:
        m = _CHANNEL.match(text)
        if not m:
            raise TspError(ILLEGAL_PARAMETER, f"{_MESSAGES[ILLEGAL_PARAMETER]}: {text!r} is not a channel")
        slot, row, col = int(m.group(1)), ROWS.find(m.group(2).upper()) + 1, int(m.group(3))
        if not (self._installed(slot) and row >= 1 and 1 <= col <= COLUMNS):
            raise TspError(OUT_OF_RANGE, f"{_MESSAGES[OUT_OF_RANGE]}: channel {text} does not exist")
        return slot, row, col

    def _parse_list(self, text: str, *, slots_allowed: bool) -> list[Channel]:
        items = [item.strip() for item in re.split(r"[,;]", text)]
        if not text.strip() or any(not item for item in items):
            raise TspError(ILLEGAL_PARAMETER, f"{_MESSAGES[ILLEGAL_PARAMETER]}: empty channel list item")
        channels: list[Channel] = []
        for item in items:
            word = item.lower()
            if word == "allslots" or re.fullmatch(r"slot\d", word):
                if not slots_allowed:
                    raise TspError(ILLEGAL_PARAMETER, f"{_MESSAGES[ILLEGAL_PARAMETER]}: {item} not allowed here")
                wanted = range(1, self.cards + 1) if word == "allslots" else [int(word[4:])]
                for slot in wanted:
                    if not self._installed(slot):
                        raise TspError(OUT_OF_RANGE, f"{_MESSAGES[OUT_OF_RANGE]}: slot {slot} is empty")
                    channels.extend(self._slot_channels(slot))
            elif ":" in item:
                first, _, last = (part.strip() for part in item.partition(":"))
                a, b = self._channel(first), self._channel(last)
                if a > b:   # "the lowest channel must be first" (3700A manual; GUESS for the 707B)
                    raise TspError(ILLEGAL_PARAMETER, f"{_MESSAGES[ILLEGAL_PARAMETER]}: range {item} runs backwards")
                channels.extend(ch for s in range(a[0], b[0] + 1) for ch in self._slot_channels(s) if a <= ch <= b)
            else:
                channels.append(self._channel(item))
        return channels

    # --- channel functions ------------------------------------------------------------------------

    def _set_closed(self, channels) -> None:
        channels = frozenset(channels)
        if channels != self._closed:
            before = self.closed
            self._closed = channels
            if self.on_change is not None and self.closed != before:
                self.on_change(self.closed)

    def _close(self, text: str) -> None:
        # the whole list is checked before any relay moves: an error closes nothing
        self._set_closed(self._closed | set(self._parse_list(text, slots_allowed=False)))

    def _open(self, text: str) -> None:
        self._set_closed(self._closed - set(self._parse_list(text, slots_allowed=True)))

    def _exclusive_close(self, text: str) -> None:
        wanted = set() if text.strip() == "" else set(self._parse_list(text, slots_allowed=False))
        self._set_closed(wanted)

    def _reset_channels(self, text: str) -> None:
        # GUESS: channel.reset restores channel attributes (delays, labels, forbidden lists)
        # and leaves the relays as they are
        self._parse_list(text, slots_allowed=True)

    def _getclose(self, text: str):
        channels = set(self._parse_list(text, slots_allowed=True)) & self._closed
        return ";".join(channel_name(ch) for ch in sorted(channels)) if channels else None


class _Multiple(list):
    """Several return values (errorqueue.next()), spread by print as Lua does."""


class _Dynamic:
    """A TSP table whose fields are computed when read (errorqueue.count)."""

    def __init__(self, fields: dict):
        self._fields = fields

    def get(self, key):
        getter = self._fields.get(key)
        return getter() if getter is not None else None


def _string_arg(function: str, args: tuple) -> str:
    if not args or not isinstance(args[0], str):
        got = "no value" if not args else ("nil" if args[0] is None else type(args[0]).__name__)
        raise _runtime(f"bad argument #1 to '{function}' (string expected, got {got})")
    return args[0]


def _route(ch: Channel) -> tuple[int, int]:
    slot, row, col = ch
    return row, (slot - 1) * COLUMNS + col
