"""How a job's model meets its tokens: resident (the whole model loaded, pipeline.analyze) or streamed (by block)."""
from __future__ import annotations

ENGINES = ("auto", "resident", "streamed")
