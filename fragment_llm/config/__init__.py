"""The schema: every key of a run, its type, its range and its help, once. Everything imports it."""
