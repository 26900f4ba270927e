"""RFC 2136 UPDATEs over UDP and TCP, signed with TSIG (RFC 8945), into the dynamic zones.

Who may change the LAN's names: a sender inside `dynamic.allow_update` (loopback by default)
with a key from `dynamic.keys_file`. Anything else is refused and counted: an unsigned update
(REFUSED), an unknown key (NOTAUTH, TSIG error BADKEY), a wrong signature (BADSIG), a clock
outside the fudge (BADTIME), a zone splitdns does not hold (NOTAUTH), a name outside it
(NOTZONE). Updates are judged and applied one at a time, in arrival order; each accepted one
is on disk (fsynced, in a thread so queries go on) before its signed answer leaves.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import time
from collections import Counter

from splitdns import wire
from splitdns.answer.views import is_allowed
from splitdns.config.dynamic import DynamicSettings
from splitdns.config.model import IPAddress
from splitdns.dynamic import message
from splitdns.dynamic.store import Store
from splitdns.dynamic.update import NOTAUTH, judge

log = logging.getLogger(__name__)

OPCODE_UPDATE = 5
RESULTS = {0: "ok", 1: "formerr", 2: "servfail", 3: "nxdomain", 5: "refused", 6: "yxdomain",
           7: "yxrrset", 8: "nxrrset", 9: "notauth", 10: "notzone"}  # fmt: skip
MAX_PENDING = 256  # updates waiting their turn; beyond, REFUSED at once (counted as busy)
SAY_EVERY = 60.0
TSIG_BADSIG, TSIG_BADKEY, TSIG_BADTIME = 16, 17, 18


def is_update(data: bytes) -> bool:
    return len(data) > 3 and (data[2] >> 3) & 0xF == OPCODE_UPDATE


class Updates:
    """The UPDATE handler of one server (made again when `dynamic:` changes)."""

    def __init__(self, settings: DynamicSettings, store: Store) -> None:
        self.settings = settings
        self.store = store
        self.keys = {k.name: k for k in settings.keys}
        self.counts: Counter[str] = Counter()  # by result, for /metrics and the dashboard
        self.pending = 0  # updates read and waiting for the lock (or on disk)
        self._said: dict[str, float] = {}
        self._lock = asyncio.Lock()

    def refusal(self, data: bytes, client: IPAddress, transport: str) -> bytes | None:
        """The answer to an UPDATE turned away before it is read (another transport, a
        sender outside allow_update, too many waiting), else None: it may be judged. Cheap,
        so a flood from the LAN costs no task and no parse."""
        if transport not in ("udp", "tcp"):
            return self._refuse(data, client, "refused", "over DoT/DoH", wire.NOTIMP)
        if not is_allowed(self.settings.allow_update, client):
            return self._refuse(data, client, "refused", "not in dynamic.allow_update")
        if self.pending >= MAX_PENDING:
            return self._refuse(data, client, "busy", f"{MAX_PENDING} updates already wait")
        return None

    def _refuse(
        self, data: bytes, client: IPAddress, result: str, why: str, rcode: int = wire.REFUSED
    ) -> bytes | None:
        self.counts[result] += 1
        self.say(f"UPDATE from {client} refused: {why}")
        return _header_reply(data, rcode)

    def say(self, line: str) -> None:
        """Log at INFO, each kind of refusal at most once a minute (a flood is counted, not
        logged line by line)."""
        kind = line.split(": ", 1)[-1]
        now = time.monotonic()
        if now - self._said.get(kind, -SAY_EVERY) >= SAY_EVERY:
            self._said[kind] = now
            log.info("%s", line)

    async def handle(self, data: bytes, client: IPAddress, transport: str) -> bytes | None:
        """The answer to one UPDATE message (None: dropped, it could not be read at all)."""
        early = self.refusal(data, client, transport)
        if early is not None or len(data) < wire.HEADER_LEN:
            return early
        self.pending += 1
        try:
            return await self._judged(data, client)
        finally:
            self.pending -= 1

    async def _judged(self, data: bytes, client: IPAddress) -> bytes | None:
        try:
            update = message.parse(data)
        except (wire.WireError, ValueError, struct.error):
            self.counts["formerr"] += 1
            return _header_reply(data, wire.FORMERR)
        tsig = update.tsig
        if tsig is None:
            self.counts["unsigned"] += 1
            self.say(f"UPDATE from {client} refused: unsigned (dynamic.keys_file)")
            return message.answer(update, wire.REFUSED)
        key = self.keys.get(tsig.key)
        if key is None or key.algorithm != tsig.algorithm:
            return self._tsig_failure(update, client, TSIG_BADKEY, "badkey")
        if not message.verify(data, tsig, key.secret):
            return self._tsig_failure(update, client, TSIG_BADSIG, "badsig")
        now = int(time.time())
        if abs(now - tsig.time_signed) > tsig.fudge:  # (after the MAC: RFC 8945 5.2.3)
            self._tsig_failure(update, client, TSIG_BADTIME, "badtime")
            refused = message.answer(update, NOTAUTH)
            clock = struct.pack("!Q", now)[2:]
            return message.signed(refused, update, key.secret, now, TSIG_BADTIME, clock)
        source = f"update from {client} (key {tsig.key})"
        async with self._lock:  # one at a time: judged on what the last one left
            rcode, zone, ops = judge(update, self.store)
            if rcode == wire.NOERROR and zone is not None and ops:
                line = self.store.apply_update(zone, ops, source)
                try:
                    await asyncio.to_thread(self.store.persist, line)
                except OSError as exc:
                    log.error("dynamic zones: the journal cannot be written: %s", exc)
                    rcode = wire.SERVFAIL
        result = RESULTS.get(rcode, f"rcode{rcode}")
        self.counts[result] += 1
        log.debug("UPDATE of %s from %s: %s (%d changes)", update.zone, client, result, len(ops))
        return message.signed(message.answer(update, rcode), update, key.secret, now)

    def _tsig_failure(
        self, update: message.Update, client: IPAddress, error: int, why: str
    ) -> bytes | None:
        """NOTAUTH with the TSIG error and no MAC (RFC 8945 section 5.2: BADKEY, BADSIG: the
        key is unknown or the MAC must not be trusted); BADTIME's signed answer is made by
        the caller."""
        self.counts[why] += 1
        self.say(f"UPDATE from {client} refused: TSIG {why.upper()}")
        return message.unsigned_error(update, error)


def _header_reply(data: bytes, rcode: int) -> bytes | None:
    """The header alone, with the ID and opcode echoed (a message we will not read further)."""
    if len(data) < wire.HEADER_LEN:
        return None
    msg_id, flags = struct.unpack("!HH", data[:4])
    return wire.make_header_error(msg_id, flags, rcode)
