"""Analyzing a model: capture, reduction, the memory meter, both engines and the detector plug-ins."""
