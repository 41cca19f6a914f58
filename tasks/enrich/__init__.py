"""Steps *maskige*, *embed* and *mine pairs*: what a clip gains beyond its frames and sound."""
