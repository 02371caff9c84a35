# SPDX-License-Identifier: Apache-2.0
"""Syslog over TCP (RFC 6587): octet counting (`LEN SP MSG`) and newline-terminated messages on
one stream, with resynchronisation: a bad frame costs one rejection and nothing after it.

Which framing a frame uses is decided per frame: octet counting when it starts with a count
(1-7 digits, no leading zero) and a space followed by `<` (a syslog PRI) or `{` (bare JSON), as
rsyslog and syslog-ng send it; anything else is a line. So a line that starts "1 2026-..." (a
header without PRI) is a line, not a count of one byte.

After a bad frame (a count over the limit or malformed, a line over the limit) the stream is
skipped to the next line end or the next `LEN <PRI>` frame header, whichever comes first; a
frame whose count was too small leaves a tail that is skipped the same way, without a second
rejection.
"""

from __future__ import annotations

import re
from typing import List, Optional, Tuple

__all__ = ["Framer"]

_COUNT = re.compile(rb"([1-9][0-9]{0,6}) ([<{])")
_DIGITS = re.compile(rb"[0-9]+")
_FRAME = re.compile(rb"(?<![0-9])[1-9][0-9]{0,6} <[0-9]{1,3}>")

Item = Tuple[Optional[bytes], Optional[Tuple[str, str]]]  # (message, None) or (None, (reason, message))


class Framer:
    def __init__(self, max_message: int = 65536) -> None:
        self.max = max_message
        self.buf = b""
        self._skipping = False  # inside a bad frame or its tail: drop up to the next line end
        self._after_frame = False  # an octet-counted frame just ended: what follows must fit

    def feed(self, chunk: bytes) -> List[Item]:
        """Messages (trailing CR/LF stripped, empty lines dropped) and errors, in stream order."""
        self.buf += chunk
        out: List[Item] = []
        while self.buf:
            if self._after_frame:
                # another frame, a line end: fine; anything else is the tail of a frame whose count
                # was too small (that frame is rejected when parsed): skip it without another rejection
                self._after_frame = False
                if self.buf[:1] not in (b"\n", b"\r", b"<", b"{") and not self.buf[:1].isdigit():
                    self._skipping = True
            if self._skipping:
                # the next line end, or the next octet-counted frame with a PRI (streams that never
                # send a line end)
                nl = self.buf.find(b"\n")
                fr = _FRAME.search(self.buf, 1)
                if fr is not None and (nl < 0 or fr.start() < nl):
                    self.buf = self.buf[fr.start():]
                elif nl >= 0:
                    self.buf = self.buf[nl + 1:]
                else:
                    self.buf = self.buf[-16:]  # a frame header may be cut across reads
                    break
                self._skipping = False
                continue
            head = self.buf[:16]
            m = _COUNT.match(head)
            if m:
                n = int(m.group(1))
                start = len(m.group(1)) + 1
                if n > self.max:
                    out.append((None, ("too_large", f"octet count {n} over the {self.max}-byte limit")))
                    self._skipping = True
                    self.buf = self.buf[start:]
                    continue
                if len(self.buf) < start + n:
                    break  # wait for the rest of the frame
                msg, self.buf = self.buf[start:start + n], self.buf[start + n:]
                out.append((msg.rstrip(b"\r\n"), None))
                self._after_frame = True
                continue
            d = _DIGITS.match(self.buf)
            if d and self.buf[d.end():d.end() + 2] in (b" <", b" {"):
                # a count, but not a valid one (20 digits, a leading zero): a broken frame
                out.append((None, ("bad_framing", f"octet count {d.group(0)[:32].decode()}: expected 1-7 digits "
                                                  "without a leading zero")))
                self._skipping = True
                continue
            nl = self.buf.find(b"\n")
            if nl < 0:
                if len(self.buf) > self.max:
                    out.append((None, ("too_large", f"line over {self.max} bytes")))
                    self._skipping = True
                    continue
                break  # the rest of the line (or of a count) is still coming
            line, self.buf = self.buf[:nl], self.buf[nl + 1:]
            line = line.rstrip(b"\r")
            if line.strip():
                if len(line) > self.max:
                    out.append((None, ("too_large", f"line over {self.max} bytes")))
                else:
                    out.append((line, None))
        return out
