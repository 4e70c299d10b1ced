"""One line of a terminal redrawn in place with \\r: the converter's progress bar and what the demo
and bench are busy with. Text is cut to the terminal's width (a wrapped line cannot be redrawn)."""

from __future__ import annotations

import shutil
from typing import TextIO


class StatusLine:
    """show(text) replaces the line; clear() erases it, so that other output starts at column 0;
    finish() ends it with a newline, keeping its last text."""

    def __init__(self, stream: TextIO):
        self.stream, self.drawn = stream, 0

    def show(self, text: str) -> None:
        line = text[:shutil.get_terminal_size().columns - 1]
        self.stream.write("\r" + line.ljust(self.drawn))  # padded to cover the previous text
        self.stream.flush()
        self.drawn = len(line)

    def clear(self) -> None:
        if self.drawn:
            self.stream.write("\r" + " " * self.drawn + "\r")
            self.stream.flush()
            self.drawn = 0

    def finish(self) -> None:
        if self.drawn:
            self.stream.write("\n")
            self.stream.flush()
            self.drawn = 0
