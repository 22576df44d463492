"""Architecture facts: adapter data types and layout rules, the adapter registry, site resolution, the structural fallback."""
