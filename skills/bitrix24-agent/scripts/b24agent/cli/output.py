"""Everything the CLI prints: results on stdout, one-line errors and progress on stderr.

Scripts and agents parse stdout, so it must carry the result and nothing else, and every byte
printed must pass the redactor first. Keeping all printing in this module makes both rules
checkable in one place. Streams are written item by item so a 100,000-row export runs in
constant memory and a reader such as ``head`` sees rows page by page as they arrive.
"""

from __future__ import annotations

import contextlib
import json
import json.encoder
import os
import threading
from collections.abc import Callable, Iterable
from typing import Any, TextIO

__all__ = ["Printer", "Progress", "dump_line"]

Mask = Callable[[str], str]

#: Longest a streamed line waits in the buffer before it is written and flushed (seconds).
FLUSH_EVERY_S = 0.1
#: Streamed lines masked and written together (one export page of 2,500 rows is a few blocks).
LINES_PER_WRITE = 500
#: Longest a failed or interrupted ``lines`` waits for the rows it received to be written.
FAILED_FLUSH_S = 1.0


def _identity(text: str) -> str:
    return text


#: One encoder for every line: ``json.dumps`` with options builds a new one per call, a fifth
#: of the time of encoding a 30-field export row.
_LINE_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))
#: And below it, the C encoder that ``JSONEncoder.encode`` would build anew for every line
#: (a third of the 15 us an export row took). Without the circular-reference check: that one
#: keeps state between calls, and lines are JSON that was decoded or built as data, which
#: cannot hold a cycle (one would end in RecursionError, not a hang). None where the
#: interpreter has no C accelerator.
_C_LINE_ENCODER = (
    json.encoder.c_make_encoder(
        None,
        _LINE_ENCODER.default,
        json.encoder.encode_basestring,
        None,
        ":",
        ",",
        False,
        False,
        True,
    )
    if json.encoder.c_make_encoder is not None
    else None
)


def dump_line(obj: Any) -> str:
    """``obj`` as one compact JSON line (no newline): the form of every stream and error line."""
    if _C_LINE_ENCODER is None:
        return _LINE_ENCODER.encode(obj)
    return "".join(_C_LINE_ENCODER(obj, 0))


class Printer:
    """Writes JSON to one stream, masked, either indented or compact."""

    def __init__(self, stream: TextIO, *, mask: Mask | None = None, compact: bool = False):
        self._stream = stream
        self._mask = mask or _identity
        self._compact = compact

    def _dump(self, obj: Any) -> str:
        if self._compact:
            return dump_line(obj)
        return json.dumps(obj, ensure_ascii=False, indent=2)

    def _write(self, text: str) -> None:
        self._stream.write(self._mask(text))

    def document(self, obj: Any) -> None:
        """One JSON document followed by a newline."""
        self._write(self._dump(obj) + "\n")
        self._stream.flush()

    def line(self, obj: Any) -> None:
        """One compact JSON line, flushed at once so pipes see it as it arrives."""
        self._write(dump_line(obj) + "\n")
        self._stream.flush()

    def lines(self, items: Iterable[Any]) -> int:
        """Each item on its own line; returns how many were written.

        Lines are masked and written in blocks of up to LINES_PER_WRITE rather than one write
        and flush per row (which cost an export of 100,000 leads a second). Masking a block
        equals masking its lines one by one: no secret or secret-shaped match spans a newline.
        A reader of the pipe sees rows page by page, as the portal sends them: a block waits at
        most FLUSH_EVERY_S, also while the next page is slow to come (a thread writes it then),
        and what was received is written before an error or an interruption goes on up, so a
        reader resuming from the last row printed loses nothing (review7 L5).

        A failure or an interruption waits at most FAILED_FLUSH_S for those rows: a stdout
        nobody reads must not keep Ctrl-C or the broker's SIGTERM from ending the call
        (review7b M-b). The thread writes to the file descriptor itself, holding no lock of
        the stream, so the interpreter can end while it still waits on a full pipe.
        """
        count = 0
        block: list[str] = []
        held = threading.Lock()  # guards ``block``
        turn = threading.Lock()  # one writer at a time, so blocks keep their order
        done = threading.Event()
        trouble: list[Exception] = []
        write_out = self._block_writer()

        def write_block() -> None:
            with turn:
                with held:
                    text = "\n".join(block) + "\n" if block else ""
                    block.clear()
                if text:
                    write_out(text)

        def write_held_blocks() -> None:
            try:
                while not done.wait(FLUSH_EVERY_S):
                    write_block()
                write_block()  # what the last page left, also after a failure
            except Exception as exc:  # stdout gone, an export past its budget: reported by
                trouble.append(exc)  # the main thread unless a failure came first

        writer = threading.Thread(target=write_held_blocks, name="b24-lines", daemon=True)
        failed = True
        try:
            for item in items:
                line = dump_line(item)
                with held:
                    block.append(line)
                    full = len(block) >= LINES_PER_WRITE
                if full:
                    write_block()
                count += 1
                if count == 1:
                    writer.start()
            failed = False
        finally:
            done.set()
            if writer.is_alive():
                writer.join(FAILED_FLUSH_S if failed else None)
        if trouble:
            raise trouble[0]
        self._stream.flush()
        return count

    def _block_writer(self) -> Callable[[str], None]:
        """How ``lines`` writes a masked block: to the stream's file descriptor when it has
        one (a thread stuck there holds none of the stream's locks), else to the stream."""
        self._stream.flush()
        try:
            fd = self._stream.fileno()
            encoding = self._stream.encoding
            errors = self._stream.errors or "strict"
        except (AttributeError, OSError, ValueError):  # io.StringIO and the like
            fd = None

        def to_stream(text: str) -> None:
            self._write(text)
            self._stream.flush()

        def to_fd(text: str) -> None:
            data = memoryview(self._mask(text).encode(encoding, errors))
            while data:
                data = data[os.write(fd, data) :]

        return to_stream if fd is None else to_fd

    def array(self, items: Iterable[Any], *, key: str | None = None) -> int:
        """Stream ``items`` as one JSON array, or as ``{key: [...], "total": n}`` when ``key``.

        The document is written piece by piece, so memory stays flat however many items come.
        Nothing is written before the first item (or the end) arrives, so a stream that fails
        at once leaves stdout empty rather than holding half a document. One that fails later
        must not pass for whole: the ``key`` form closes its document with ``"incomplete":
        true``; the bare array has no room for that marker, so it stays open and fails to
        parse, as a cut export should (review7b L-e). The error line on stderr and the exit
        code say what is missing in both.
        """
        compact = self._compact
        pad = "" if compact else "  " * (2 if key else 1)
        first, sep = ("", ",") if compact else ("\n", ",\n")
        opening = "["
        if key:
            opening = f'{{"{key}":[' if compact else f'{{\n  "{key}": ['
        count = 0
        try:
            for item in items:
                text = self._dump(item)
                if pad:
                    text = pad + text.replace("\n", "\n" + pad)
                self._write(sep + text if count else opening + first + text)
                count += 1
        except BaseException:
            if count:
                ending = self._closing(count, key, incomplete=True) if key else ""
                with contextlib.suppress(OSError):  # a reader gone must not hide the failure
                    self._write(ending + "\n")
                    self._stream.flush()
            raise
        end = self._closing(count, key, incomplete=False)
        self._write(end + "\n" if count else opening + end + "\n")
        self._stream.flush()
        return count

    def _closing(self, count: int, key: str | None, *, incomplete: bool) -> str:
        """What ends ``array``'s document after ``count`` items."""
        compact = self._compact
        end = "]" if compact or not count else "\n" + ("  " if key else "") + "]"
        if key:
            fields = {"total": count, **({"incomplete": True} if incomplete else {})}
            sep, colon = (",", ":") if compact else (",\n  ", ": ")
            end += "".join(
                f'{sep}"{name}"{colon}{json.dumps(value)}' for name, value in fields.items()
            )
            end += "}" if compact else "\n}"
        return end


class Progress:
    """``exported 2500 rows...`` on stderr, only when a person is watching a terminal.

    Piped or captured stderr is for the one error line of the contract, so progress stays off
    there; on a terminal it overwrites itself with a carriage return and ends with a newline.
    """

    def __init__(self, stream: TextIO, verb: str, noun: str):
        self._stream = stream
        self._label = f"{verb} {{}} {noun}..."
        self._enabled = _isatty(stream)
        self._shown = False

    @property
    def enabled(self) -> bool:
        return self._enabled

    def __call__(self, count: int) -> None:
        if self._enabled:
            self._stream.write("\r" + self._label.format(count))
            self._stream.flush()
            self._shown = True

    def finish(self) -> None:
        if self._shown:
            self._stream.write("\n")
            self._stream.flush()
            self._shown = False


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
