"""Instrument side of a Keysight (Agilent) E5250A low-leakage switch mainframe with
E5252A 10x12 matrix cards, as a text core: one received message in, reply lines out.

Written from the E5250A User's Guide (chapters 5-6: channel lists, configuration modes,
connection rule and sequence, SCPI path rules) and the B2200 guide's command reference,
whose switch commands are the same family (the B2200 keeps them "for compatibility with
the E5250A"). The E5250A's own chapter 7 could not be consulted; where neither source
settles a behaviour, the choice is marked GUESS.

Channel list ``(@CIIOO, CIIOO:CIIOO, ...)``: C card digit, II input 01-10, OO output.
Auto configuration (``:ROUT:FUNC ACON``, the default) treats all cards as one card: C is 0
and OO runs 01..12*cards. Normal configuration (``NCON``): C is the slot 1-4, OO is 01-12.
Internally, and towards ``on_change``/``closed``, outputs are always in auto numbering.

Errors: a command error (-1xx) discards the rest of the message, as IEEE 488.2 parsers
cannot trust what follows; an execution error (-2xx) only skips its own command, so later
commands and queries in the same message still run. A query that fails gives no reply line.
"""

from __future__ import annotations

from typing import Callable

INPUTS = 10
OUTPUTS_PER_CARD = 12
MAX_CARDS = 4
CARD_MODEL = "E5252A"
EMPTY_SLOT = "NONE"  # GUESS: answer of :SYST:CTYP? for a slot without a card
ERROR_QUEUE_LENGTH = 30  # GUESS: the length used by Agilent switchboxes of the same family
DEFAULT_IDN = "Agilent Technologies,E5250A,0,B.01.02"
DEFAULT_RULE = "FREE"  # *RST state per the guides: free route, break-before-make
DEFAULT_SEQUENCE = "BBM"

_ERROR_TEXT = {
    -100: "Command error",
    -102: "Syntax error",
    -108: "Parameter not allowed",
    -109: "Missing parameter",
    -113: "Undefined header",
    -222: "Data out of range",
    -224: "Illegal parameter value",
    -240: "Hardware error",   # SCPI: a legal command not carried out for a hardware problem
    -350: "Queue overflow",
}

# *ESR? bits (IEEE 488.2)
_OPC, _QYE, _DDE, _EXE, _CME, _PON = 1, 4, 8, 16, 32, 128

# choice parameters: accepted spellings -> canonical (query) form
_MODES = {"ACON": "ACON", "ACONFIG": "ACON", "NCON": "NCON", "NCONFIG": "NCON"}
_RULES = {"FREE": "FREE", "SROU": "SROU", "SROUTE": "SROU"}
_SEQUENCES = {"BBM": "BBM", "MBBR": "MBBR", "MBBREAK": "MBBR", "NSEQ": "NSEQ", "NSEQUENCE": "NSEQ"}


class SCPIError(Exception):
    def __init__(self, code: int):
        super().__init__(code)
        self.code = code


def _compile(pattern: str) -> tuple[tuple[str, str, bool], ...]:
    """'[:ROUTe]:CLOSe[:LIST]' -> ((short, long, optional), ...) in upper case."""
    nodes, i = [], 0
    while i < len(pattern):
        optional = pattern[i] == "["
        i += optional + 1  # skip '[' and ':'
        j = i
        while j < len(pattern) and pattern[j].isalpha():
            j += 1
        name = pattern[i:j]
        short = "".join(c for c in name if c.isupper())
        nodes.append((short, name.upper(), optional))
        i = j + optional  # skip ']'
    return tuple(nodes)


def _matches(nodes: list[str], pattern: tuple[tuple[str, str, bool], ...]) -> bool:
    if not pattern:
        return not nodes
    short, long, optional = pattern[0]
    if nodes and nodes[0] in (short, long) and _matches(nodes[1:], pattern[1:]):
        return True
    return optional and _matches(nodes, pattern[1:])


def _split(text: str, separator: str) -> list[str]:
    """Split at separator outside parentheses and quotes."""
    parts, depth, quote, start = [], 0, "", 0
    for k, c in enumerate(text):
        if quote:
            quote = "" if c == quote else quote
        elif c in "'\"":
            quote = c
        elif c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
        elif c == separator and depth == 0:
            parts.append(text[start:k])
            start = k + 1
    parts.append(text[start:])
    return parts


def _choice(text: str, choices: dict[str, str]) -> str:
    try:
        return choices[text.strip().upper()]
    except KeyError:
        raise SCPIError(-224) from None


def _arity(params: list[str], n: int) -> list[str]:
    if len(params) < n:
        raise SCPIError(-109)
    if len(params) > n:
        raise SCPIError(-108)
    return params


class E5250ACore:
    name = "E5250A"
    read_termination = "\n"
    write_termination = "\n"

    # (header in the guide's notation, is query, handler name)
    _TABLE = [
        ("[:ROUTe]:CLOSe[:LIST]", False, "_close"),
        ("[:ROUTe]:CLOSe[:LIST]", True, "_close_query"),
        ("[:ROUTe]:OPEN[:LIST]", False, "_open"),
        ("[:ROUTe]:OPEN[:LIST]", True, "_open_query"),
        ("[:ROUTe]:CLOSe:CARD", True, "_close_card_query"),
        ("[:ROUTe]:OPEN:CARD", False, "_open_card"),
        ("[:ROUTe]:CONNection:RULE", False, "_set_rule"),
        ("[:ROUTe]:CONNection:RULE", True, "_rule_query"),
        ("[:ROUTe]:CONNection:SEQuence", False, "_set_sequence"),
        ("[:ROUTe]:CONNection:SEQuence", True, "_sequence_query"),
        ("[:ROUTe]:FUNCtion", False, "_set_function"),
        ("[:ROUTe]:FUNCtion", True, "_function_query"),
        (":SYSTem:ERRor[:NEXT]", True, "_error_query"),
        (":SYSTem:CTYPe", True, "_card_type_query"),
        (":SYSTem:CPON", False, "_card_power_on"),
    ]
    _COMPILED = [(_compile(p), q, h) for p, q, h in _TABLE]
    _COMMON = {
        "*IDN?": "_idn",
        "*RST": "_rst",
        "*CLS": "_cls",
        "*OPC": "_opc",
        "*OPC?": "_opc_query",
        "*ESR?": "_esr_query",
        "*TST?": "_tst",
        "*WAI": "_wai",
    }

    def __init__(self, cards: int = 2, on_change: Callable[[frozenset], None] | None = None,
                 idn: str | None = None):
        if not 1 <= cards <= MAX_CARDS:
            raise ValueError(f"cards must be 1..{MAX_CARDS}, got {cards}")
        self.cards = cards
        self.on_change = on_change
        self.idn = idn or DEFAULT_IDN
        self._closed: frozenset[tuple[int, int]] = frozenset()
        self._errors: list[int] = []
        self._failures = 0  # inject_error: commands still to fail
        self._esr = _PON  # power-on bit stays set until *ESR? or *CLS, as on the instrument
        self._mode = "ACON"
        self._rule: dict[int, str] = {}
        self._sequence: dict[int, str] = {}
        self._restore_card_settings()

    # ----------------------------------------------------------------- public API

    @property
    def closed(self) -> frozenset[tuple[int, int]]:
        return self._closed

    def reset(self) -> None:
        """*RST: all relays open, auto configuration, default rule and sequence.
        The error queue and *ESR? are status, which *RST leaves alone (IEEE 488.2)."""
        # GUESS: *RST returns to auto configuration, the power-on default
        self._mode = "ACON"
        self._restore_card_settings()
        self._set_closed(set())

    @classmethod
    def emulate(cls, on_change: Callable[[frozenset], None], options: dict, timing) -> "E5250ACore":
        """The core a bench file's instrument entry describes (options: cards)."""
        return cls(cards=int(options.get("cards", 2)), on_change=on_change)

    def inject_error(self, count: int = 1) -> None:
        """The next `count` commands that change something (not queries, not *CLS, *OPC,
        *WAI) fail with the SCPI execution error -240 "Hardware error" (GUESS: the code the
        E5250A gives for a relay it could not drive); like any execution error, only that
        command is skipped."""
        self._failures += int(count)

    def _inject(self, header: str) -> None:
        if self._failures and not header.endswith("?") and header.upper() not in ("*CLS", "*OPC", "*WAI"):
            self._failures -= 1
            raise SCPIError(-240)

    def handle(self, message: str) -> list[str]:
        replies: list[str] = []
        path: list[str] = []  # SCPI: each message starts at the root
        for unit in _split(message, ";"):
            unit = unit.strip()
            if not unit:
                continue
            try:
                header, params = self._parse_unit(unit)
                if header.startswith("*"):
                    handler = self._common(header)
                else:
                    handler, path = self._resolve(header, path)
                self._inject(header)
                reply = handler(params)
            except SCPIError as err:
                self._push_error(err.code)
                if -200 < err.code <= -100:
                    break
                continue
            if reply is not None:
                replies.append(reply)
        return replies

    # ----------------------------------------------------------------- parsing

    @staticmethod
    def _parse_unit(unit: str) -> tuple[str, list[str]]:
        end = 0
        while end < len(unit) and (unit[end].isalnum() or unit[end] in ":*?"):
            end += 1
        header, rest = unit[:end], unit[end:]
        if not header or (rest and not rest[0].isspace()):
            raise SCPIError(-102)
        rest = rest.strip()
        params = [p.strip() for p in _split(rest, ",")] if rest else []
        if any(not p for p in params):
            raise SCPIError(-102)
        return header, params

    def _common(self, header: str):
        name = self._COMMON.get(header.upper())
        if name is None:
            # the header exists, only in the other form (query vs command)
            other = header[:-1] if header.endswith("?") else header + "?"
            raise SCPIError(-100 if other.upper() in self._COMMON else -113)
        return getattr(self, name)

    def _resolve(self, header: str, path: list[str]):
        query = header.endswith("?")
        body = header[:-1] if query else header
        absolute = body.startswith(":")
        nodes = body[1:].split(":") if absolute else body.split(":")
        if "?" in body or any(not n for n in nodes):
            raise SCPIError(-102)
        nodes = [n.upper() for n in nodes]
        full = nodes if absolute else path + nodes
        found = [(q, h) for pattern, q, h in self._COMPILED if _matches(full, pattern)]
        if not found:
            raise SCPIError(-113)
        for q, h in found:
            if q == query:
                return getattr(self, h), full[:-1]
        # e.g. ':ROUT:CLOS:CARD 1' without '?'. GUESS: the firmware may call this -113.
        raise SCPIError(-100)

    def _channel(self, text: str) -> tuple[int, int, int]:
        """'CIIOO' -> (card, input, output as written), checked against the mode."""
        text = text.strip()
        if len(text) != 5 or not text.isdigit():
            raise SCPIError(-102)
        card, inp, out = int(text[0]), int(text[1:3]), int(text[3:])
        if card not in self._card_keys():
            raise SCPIError(-222)
        outputs = OUTPUTS_PER_CARD * (self.cards if card == 0 else 1)
        if not (1 <= inp <= INPUTS and 1 <= out <= outputs):
            raise SCPIError(-222)
        return card, inp, out

    def _channels(self, params: list[str]) -> list[tuple[int, int]]:
        """Channel list -> (input, auto output) pairs in list order; a range is the
        rectangle of inputs x outputs between its corners."""
        (text,) = _arity(params, 1)
        inner = text[1:-1].strip() if text.startswith("(") and text.endswith(")") else ""
        if not inner.startswith("@"):
            raise SCPIError(-102)
        body = inner[1:].strip()
        pairs: list[tuple[int, int]] = []
        if not body:
            return pairs
        for item in body.split(","):
            corners = [self._channel(c) for c in item.split(":")]
            if len(corners) == 1:
                card, inp, out = corners[0]
                pairs.append((inp, self._auto_output(card, out)))
            elif len(corners) == 2:
                (card, i1, o1), (card2, i2, o2) = corners
                if card != card2:  # GUESS: a range stays within one card
                    raise SCPIError(-222)
                # GUESS: corners may come in either order
                for inp in range(min(i1, i2), max(i1, i2) + 1):
                    for out in range(min(o1, o2), max(o1, o2) + 1):
                        pairs.append((inp, self._auto_output(card, out)))
            else:
                raise SCPIError(-102)
        return pairs

    def _cards_param(self, text: str, allow_all: bool = True) -> list[int]:
        word = text.strip().upper()
        if word == "ALL":
            if not allow_all:  # ALL is not available for queries
                raise SCPIError(-224)
            return self._card_keys()
        try:
            card = int(word)
        except ValueError:
            raise SCPIError(-224) from None
        if card not in self._card_keys():
            raise SCPIError(-222)
        return [card]

    # ----------------------------------------------------------------- state helpers

    def _card_keys(self) -> list[int]:
        """Card numbers valid in the present mode: 0 in auto, the installed slots in normal."""
        return [0] if self._mode == "ACON" else list(range(1, self.cards + 1))

    def _auto_output(self, card: int, out: int) -> int:
        return out if card == 0 else (card - 1) * OUTPUTS_PER_CARD + out

    def _card_of(self, output: int) -> int:
        return 0 if self._mode == "ACON" else (output - 1) // OUTPUTS_PER_CARD + 1

    def _outputs_of(self, card: int) -> range:
        if card == 0:
            return range(1, OUTPUTS_PER_CARD * self.cards + 1)
        return range((card - 1) * OUTPUTS_PER_CARD + 1, card * OUTPUTS_PER_CARD + 1)

    def _restore_card_settings(self) -> None:
        self._rule = {card: DEFAULT_RULE for card in self._card_keys()}
        self._sequence = {card: DEFAULT_SEQUENCE for card in self._card_keys()}

    def _set_closed(self, pairs) -> None:
        pairs = frozenset(pairs)
        if pairs != self._closed:
            self._closed = pairs
            if self.on_change is not None:
                self.on_change(pairs)

    def _push_error(self, code: int) -> None:
        self._esr |= {1: _CME, 2: _EXE, 3: _DDE, 4: _QYE}.get(-code // 100, 0)
        if len(self._errors) < ERROR_QUEUE_LENGTH:
            self._errors.append(code)
        else:  # SCPI: the newest entry becomes the overflow marker, later errors are lost
            self._errors[-1] = -350

    # ----------------------------------------------------------------- relays

    def _close(self, params):
        pairs = set(self._closed)
        for inp, out in self._channels(params):
            card = self._card_of(out)
            if self._rule[card] == "SROU":
                # single route: the new route displaces whatever holds its input (within
                # this card, or the whole frame in auto mode) or its output. The sequence
                # (BBM/MBBR/NSEQ) orders the relay moves: on_change sees the end state, and
                # before it the moment both routes are made, unless the old one breaks first.
                scope = self._outputs_of(card)
                kept = {(i, o) for i, o in pairs if not ((i == inp and o in scope) or o == out)}
                if kept != pairs and self._sequence[card] != "BBM":
                    # make before break (MBBR), or no order at all (NSEQ, GUESS: taken as the
                    # worst case): the new route is made while the old ones still hold
                    self._set_closed(pairs | {(inp, out)})
                pairs = kept
            pairs.add((inp, out))
        self._set_closed(pairs)

    def _open(self, params):
        self._set_closed(self._closed - set(self._channels(params)))

    def _close_query(self, params):
        return ",".join("1" if p in self._closed else "0" for p in self._channels(params))

    def _open_query(self, params):
        return ",".join("0" if p in self._closed else "1" for p in self._channels(params))

    def _close_card_query(self, params):
        (text,) = _arity(params, 1)
        (card,) = self._cards_param(text, allow_all=False)
        outputs = self._outputs_of(card)
        first = outputs[0] - 1
        channels = sorted(f"{card}{i:02d}{o - first:02d}" for i, o in self._closed if o in outputs)
        return "(@" + ",".join(channels) + ")"

    def _open_card(self, params):
        (text,) = _arity(params, 1)
        outputs = {o for card in self._cards_param(text) for o in self._outputs_of(card)}
        self._set_closed({(i, o) for i, o in self._closed if o not in outputs})

    # ----------------------------------------------------------------- settings

    def _set_rule(self, params):
        card_text, rule_text = _arity(params, 2)
        rule = _choice(rule_text, _RULES)
        # Changing the rule leaves existing connections as they are (4155C/E5250A note).
        for card in self._cards_param(card_text):
            self._rule[card] = rule

    def _rule_query(self, params):
        (text,) = _arity(params, 1)
        return self._rule[self._cards_param(text, allow_all=False)[0]]

    def _set_sequence(self, params):
        card_text, seq_text = _arity(params, 2)
        sequence = _choice(seq_text, _SEQUENCES)
        for card in self._cards_param(card_text):
            self._sequence[card] = sequence

    def _sequence_query(self, params):
        (text,) = _arity(params, 1)
        return self._sequence[self._cards_param(text, allow_all=False)[0]]

    def _set_function(self, params):
        (text,) = _arity(params, 1)
        mode = _choice(text, _MODES)
        if mode != self._mode:
            # GUESS: changing the channel configuration renumbers every channel, so the
            # frame opens all relays and starts the new mode's cards from their defaults.
            self._mode = mode
            self._restore_card_settings()
            self._set_closed(set())

    def _function_query(self, params):
        _arity(params, 0)
        return self._mode

    def _card_type_query(self, params):
        (text,) = _arity(params, 1)
        try:
            slot = int(text)
        except ValueError:
            raise SCPIError(-224) from None
        if not 1 <= slot <= MAX_CARDS:  # GUESS: asks about a physical slot, in either mode
            raise SCPIError(-222)
        return CARD_MODEL if slot <= self.cards else EMPTY_SLOT

    def _card_power_on(self, params):
        (text,) = _arity(params, 1)
        cards = self._cards_param(text)
        for card in cards:
            self._rule[card] = DEFAULT_RULE
            self._sequence[card] = DEFAULT_SEQUENCE
        outputs = {o for card in cards for o in self._outputs_of(card)}
        self._set_closed({(i, o) for i, o in self._closed if o not in outputs})

    def _error_query(self, params):
        _arity(params, 0)
        if not self._errors:
            return '0,"No error"'
        code = self._errors.pop(0)
        return f'{code},"{_ERROR_TEXT[code]}"'

    # ----------------------------------------------------------------- common commands

    def _idn(self, params):
        _arity(params, 0)
        return self.idn

    def _rst(self, params):
        _arity(params, 0)
        self.reset()

    def _cls(self, params):
        _arity(params, 0)
        self._errors.clear()
        self._esr = 0

    def _opc(self, params):
        _arity(params, 0)
        self._esr |= _OPC  # every operation is complete by the time the next one is parsed

    def _opc_query(self, params):
        _arity(params, 0)
        return "1"

    def _esr_query(self, params):
        _arity(params, 0)
        value, self._esr = self._esr, 0
        return str(value)

    def _tst(self, params):
        _arity(params, 0)
        return "0"

    def _wai(self, params):
        _arity(params, 0)
