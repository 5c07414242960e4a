"""The guard every outgoing message passes, whoever built it: one mechanism, fed by each
driver's grammar of its instrument.

A grammar parses a message into commands, knows which of them it can prove safe under the
bench limits given what the session has set up on the instrument (its `state`), and
refuses everything else: an unknown command, a level it cannot check, a pulse of unknown
width or energy, a mode nobody set up in this session. State the session cannot see
(left by another program, or before the connect reset) is unknown, and unknown counts as
unsafe.

A message that has been sent has not necessarily been carried out: a command may fail and
the instrument skip the rest, a reply may be lost. Until the instrument confirms the whole
message (its error queue read clean right after it, in the same message), the guard holds
the worst of every state the message passes through (`Change.uncertain`, merged with the
grammar's `doubt`); confirmed, it holds the state the message leaves (`Change.after`).
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Generic, TypeVar

from .errors import LimitError

State = TypeVar("State")
# printable ASCII only: a CR, LF or NUL inside a message would end it early on the
# instrument, and the rest would run as a message nobody checked
_UNPRINTABLE = re.compile(r"[^\x20-\x7e]")


class Grammar(ABC, Generic[State]):
    """What an instrument accepts, as far as the guard needs to know."""

    @abstractmethod
    def unknown_state(self) -> State:
        """The state before this session has reset the instrument."""

    @abstractmethod
    def commands(self, message: str) -> list[str]:
        """The commands of one message, in order."""

    @abstractmethod
    def apply(self, state: State, command: str, where: str) -> None:
        """Check one command against the limits and `state`, then update `state` as the
        instrument would; raise LimitError (naming `where`) if it is not provably safe."""

    def finish(self, state: State, where: str) -> None:
        """Checks that span the whole message (a pulse set up in several commands)."""

    @abstractmethod
    def doubt(self, a: State, b: State) -> State:
        """One state that assumes the worst of both `a` and `b` (a new object: neither is
        changed). Merging the states a message passes through must also cover any subset of
        its commands having run."""

    @abstractmethod
    def copy(self, state: State) -> State: ...


@dataclass(frozen=True)
class Change(Generic[State]):
    after: State        # the state if the whole message is carried out
    uncertain: State    # the worst of the states it passes through, if not all of it is


class Guard(Generic[State]):
    def __init__(self, grammar: Grammar[State], name: str):
        self.grammar, self.name = grammar, name
        self.state: State = grammar.unknown_state()

    def check(self, message: str) -> Change[State]:
        """What `message` would do to the state; raises LimitError, sending nothing, if any
        part of it cannot be proved safe."""
        bad = _UNPRINTABLE.search(message)
        if bad:
            raise LimitError(f"{self.name}: {message!r}: character {bad.group()!r} inside a message "
                             f"(a terminator would split it into commands nobody checked)")
        g = self.grammar
        state, uncertain = g.copy(self.state), self.state
        for command in g.commands(message):
            g.apply(state, command, f"{self.name}: {command.strip()!r}: ")
            uncertain = g.doubt(uncertain, state)
        g.finish(state, f"{self.name}: ")
        return Change(state, uncertain)


_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")
_INTEGER = re.compile(r"[+-]?\d+")


def number(token: str, where: str) -> float:
    """A decimal number as instruments accept it; nothing else (no nan, inf, hex)."""
    if not _NUMBER.fullmatch(token.strip()):
        raise LimitError(f"{where}cannot check non-numeric argument {token.strip()!r}")
    return float(token)


def integer(token: str, where: str) -> int:
    if not _INTEGER.fullmatch(token.strip()):
        raise LimitError(f"{where}cannot check non-integer argument {token.strip()!r}")
    return int(token)
