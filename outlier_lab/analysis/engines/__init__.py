"""How a job's model meets its tokens: resident.py (the whole model loaded) or streamed.py (one block at a time)."""

from __future__ import annotations

ENGINES = ("auto", "resident", "streamed")
