"""The lab layer's error (live runs, topologies, the lab process and its commands)."""


class LabError(RuntimeError):
    """The lab could not do what was asked; the message says why and what to do."""
